"""Notebook widgets: the live training dashboard, the comparison panel and the configuration form.

watch(run)                     the dashboard of a run (text where no widget frontend exists)
ComparePanel(prompt).generate() base and adapters side by side, streaming
ChatPanel(conversation)        a conversation with the base or an adapter, switchable between turns
ConfigForm(namespace)          every RunConfig setting as a form; .to_cell() gives a %%finetune cell
Shown(widget).display()        a widget with a static picture of itself in the same output; .freeze()
watch_sweep(sweep)             a sweep's current run dashboard over its finished runs' curves, and its table
"""

from __future__ import annotations

from .chat import ChatPanel
from .compare import ComparePanel
from .dashboard import Dashboard
from .form import ConfigForm
from .frontend import use_widgets
from .loss_chart import LossChart
from .loss_plot import LossPlot
from .static import Shown
from .sweep import SweepView, watch_sweep
from .text_progress import TextProgress
from .watch import watch

__all__ = [
    "ChatPanel",
    "ComparePanel",
    "ConfigForm",
    "Dashboard",
    "LossChart",
    "LossPlot",
    "Shown",
    "SweepView",
    "TextProgress",
    "use_widgets",
    "watch",
    "watch_sweep",
]
