import pytest
import torch

from napari_clis.network import ClisNet, NetworkConfig


def test_multi_class_network_outputs_logits_and_log_variance_per_class():
    net = ClisNet(NetworkConfig(n_classes=4, width=8)).eval()
    logits, logvar = net(torch.zeros(2, 3, 32, 40))
    assert logits.shape == logvar.shape == (2, 4, 32, 40)


def test_blocks_a1_to_a4_and_b1_to_b3_each_carry_two_masked_convolutions():
    net = ClisNet(NetworkConfig(width=8))
    names = list(net.masked_convs())
    assert [n.split(".")[0] for n in names[::2]] == ["A1", "A2", "A3", "A4", "B1", "B2", "B3"]
    assert len(names) == 14


def test_switching_a_kernel_off_removes_its_output_channel():
    torch.manual_seed(0)
    net = ClisNet(NetworkConfig(width=8)).eval()
    x = torch.randn(1, 3, 16, 16)
    conv = net.A1.conv1
    on = conv(x, 0)
    with torch.no_grad():
        conv.gates.logits[0][3] = -5.0
    off = conv(x, 0)
    assert on[0, 3].abs().sum() > 0 and off[0, 3].abs().sum() == 0
    torch.testing.assert_close(on[0, :3], off[0, :3])


def test_a_new_task_has_its_own_masks_and_leaves_the_old_output_unchanged():
    torch.manual_seed(0)
    net = ClisNet(NetworkConfig(width=8)).eval()
    x = torch.randn(1, 3, 16, 16)
    before = net(x, 0)[0]
    t = net.add_task(init_from=0)
    with torch.no_grad():
        for conv in net.masked_convs().values():
            conv.gates.logits[t][0] = -5.0
    torch.testing.assert_close(net(x, 0)[0], before)
    assert not torch.allclose(net(x, t)[0], before)


def test_trunk_then_heads_equals_the_plain_forward_in_eval_mode():
    torch.manual_seed(0)
    net = ClisNet(NetworkConfig(width=8)).eval()
    x = torch.randn(1, 3, 24, 32)
    z, s = net(x)
    z2, s2 = net.heads(net.trunk(x), net.B3.conv2.gates.hard(0))
    torch.testing.assert_close(z, z2)
    torch.testing.assert_close(s, s2)


def test_sizes_not_divisible_by_eight_are_refused():
    with pytest.raises(ValueError, match="divisible by 8"):
        ClisNet(NetworkConfig(width=8)).trunk(torch.zeros(1, 3, 20, 16))
