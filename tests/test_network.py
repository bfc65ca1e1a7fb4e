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


def test_a_dilated_bottleneck_sees_farther_keeps_its_shapes_and_round_trips(tmp_path):
    from napari_clis.checkpoint import load_model, save_model

    torch.manual_seed(0)
    plain = ClisNet(NetworkConfig(width=4)).eval()
    dilated = ClisNet(NetworkConfig(width=4, bottleneck_dilation=2)).eval()
    dilated.load_state_dict(plain.state_dict())  # the same weights: only the field of view differs
    assert [c.conv.dilation for c in (dilated.A4.conv1, dilated.A4.conv2, dilated.A3.conv2)] == [(2, 2), (4, 4), (1, 1)]

    def reach(net):  # pixels of a 256 px row whose input moves the features at its centre
        x = torch.randn(1, 3, 8, 256, generator=torch.Generator().manual_seed(1)).requires_grad_()
        net.trunk(x)[0, :, 4, 128].sum().backward()
        return int((x.grad[0].abs().sum((0, 1)) > 0).sum())

    assert reach(dilated) > reach(plain) + 40
    path = tmp_path / "dilated.pt"
    save_model(path, dilated, {"name": "dilated"})
    loaded, _, _ = load_model(path)
    assert loaded.config.bottleneck_dilation == 2
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(loaded.eval()(x)[0], dilated(x)[0])
    # configs written before the option load as the plain network
    assert NetworkConfig.from_dict({"width": 4}).bottleneck_dilation == 1
