"""Two small plots for the Learn section, drawn with QPainter (no plotting library needed for a few points).

* :class:`TaskPlot` - each learned task's Dice on its own image before learning (grey) and after (blue),
  growing as the user works.
* :class:`MaskUsagePlot` - per layer (A1.1 ... B3.2, from input to output), the share of kernels the current task
  switches on; the part the pretrained model does not use (what learning added) in orange.

Thin: they only draw what :mod:`napari_clis.continual` computes.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

BEFORE, AFTER, BASE, ADDED, AXIS = "#9e9e9e", "#42a5f5", "#5c6bc0", "#ffa726", "#bdbdbd"


class _Plot(QWidget):
    height_px = 110

    def __init__(self, tooltip: str = ""):
        super().__init__()
        self.setMinimumHeight(self.height_px)
        self.setMaximumHeight(self.height_px)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(tooltip)

    def _frame(self, painter: QPainter) -> QRectF:
        """The plotting area inside margins for the axis labels and the legend."""
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(painter.font())
        font.setPointSizeF(7.5)
        painter.setFont(font)
        return QRectF(30, 16, max(10, self.width() - 38), max(10, self.height() - 34))

    def _text(self, painter, x, y, text, colour=AXIS, align=Qt.AlignmentFlag.AlignLeft):
        painter.setPen(QColor(colour))
        rect = QRectF(x, y - 7, 200, 14) if align == Qt.AlignmentFlag.AlignLeft else QRectF(x - 200, y - 7, 200, 14)
        painter.drawText(rect, align | Qt.AlignmentFlag.AlignVCenter, text)


class TaskPlot(_Plot):
    """Dice before and after learning, one pair of points per learned task."""

    def __init__(self):
        from ._tooltips import TASK_PLOT

        super().__init__(TASK_PLOT)
        self.before: list[float] = []
        self.after: list[float] = []

    def set_tasks(self, records) -> None:
        self.before = [float(r.dice_before) for r in records]
        self.after = [float(r.dice_after) for r in records]
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        area = self._frame(p)
        self._text(p, area.left(), 7, "Fit per task:  ")
        self._text(p, area.left() + 118, 7, "● before", BEFORE)
        self._text(p, area.left() + 168, 7, "● after learning", AFTER)
        lo = min(0.9, np.floor((min([*self.before, *self.after], default=0.9) - 0.02) * 10) / 10)
        p.setPen(QPen(QColor(AXIS), 1))
        p.drawRect(area)
        for v in (lo, 1.0):
            self._text(p, area.left() - 3, area.bottom() - (v - lo) / (1 - lo) * area.height(), f"{v:.1f}",
                       align=Qt.AlignmentFlag.AlignRight)
        n = len(self.after)
        if not n:
            self._text(p, area.left() + 8, area.center().y(), "nothing learned yet")
            p.end()
            return
        step = area.width() / max(n, 1)

        def point(i, v):
            return QPointF(area.left() + step * (i + 0.5), area.bottom() - (v - lo) / (1 - lo) * area.height())

        for values, colour in ((self.before, BEFORE), (self.after, AFTER)):
            p.setPen(QPen(QColor(colour), 1.5))
            for i in range(1, n):
                p.drawLine(point(i - 1, values[i - 1]), point(i, values[i]))
            p.setBrush(QColor(colour))
            for i, v in enumerate(values):
                p.drawEllipse(point(i, v), 3, 3)
        for i in range(n):
            if n <= 12 or i % (n // 12 + 1) == 0:
                self._text(p, point(i, lo).x() - 4, area.bottom() + 8, str(i + 1))
        p.end()


class MaskUsagePlot(_Plot):
    """Per layer, the share of kernels the current task uses, and how much of it learning added."""

    def __init__(self):
        from ._tooltips import MASK_PLOT

        super().__init__(MASK_PLOT)
        self.usage: list[tuple[str, int, int, int]] = []
        self.task = 0

    def set_usage(self, usage, task: int) -> None:
        self.usage, self.task = list(usage), int(task)
        self.update()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        area = self._frame(p)
        self._text(p, area.left(), 7, "Network used:" if self.task == 0 else f"Network used, task {self.task}:")
        self._text(p, area.left() + 118, 7, "■ pretrained", BASE)
        self._text(p, area.left() + 190, 7, "■ learned", ADDED)
        p.setPen(QPen(QColor(AXIS), 1))
        p.drawRect(area)
        self._text(p, area.left() - 3, area.top(), "100%", align=Qt.AlignmentFlag.AlignRight)
        self._text(p, area.left() - 3, area.bottom(), "0", align=Qt.AlignmentFlag.AlignRight)
        if not self.usage:
            self._text(p, area.left() + 8, area.center().y(), "segment an image first")
            p.end()
            return
        step = area.width() / len(self.usage)
        p.setPen(Qt.PenStyle.NoPen)
        for i, (_name, on, new, total) in enumerate(self.usage):
            x = area.left() + step * i + step * 0.15
            h_base = (on - new) / total * area.height()
            h_new = new / total * area.height()
            p.setBrush(QColor(BASE))
            p.drawRect(QRectF(x, area.bottom() - h_base, step * 0.7, h_base))
            p.setBrush(QColor(ADDED))
            p.drawRect(QRectF(x, area.bottom() - h_base - h_new, step * 0.7, h_new))
        self._text(p, area.left(), area.bottom() + 8, "input")
        self._text(p, area.right(), area.bottom() + 8, "output", align=Qt.AlignmentFlag.AlignRight)
        p.end()
