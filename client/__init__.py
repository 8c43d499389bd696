"""essaim.client: the volunteer app. It trains only when the machine is idle and obeys every limit
the volunteer sets.

- :mod:`~essaim.client.policy`: the rules, a pure function from observations to a decision;
- :mod:`~essaim.client.supervisor`: the engine (observe, decide, drive the trainer, report);
- :mod:`~essaim.client.tray`: the tray icon; :mod:`~essaim.client.cli`: ``essaim run | status | ...``;
- :mod:`~essaim.client.entry`: the app's own process, which ``essaim run`` becomes once its flags are parsed;
- :mod:`~essaim.client.trainer`: the heavy trainer process (torch, hivemind), spawned by the app.

The app process never imports torch, transformers or hivemind: only the trainer does.
"""

from __future__ import annotations
