"""Start the app in this process: where its files go, which address it binds, how it is stopped.

Uploads and rendered pictures live in one temporary folder per app (gradio's ``GRADIO_TEMP_DIR``), so
nothing a user uploads is written anywhere else; gradio's usage statistics are switched off (the app
makes no outside connection unless ``share`` asks for a public link).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from offseg_vis.errors import OffSegError

TEMP_ENV = "GRADIO_TEMP_DIR"


def use_temp_dir(folder: str | os.PathLike | None = None) -> Path:
    """Make gradio keep uploads and rendered files in ``folder`` (default: a fresh ``offseg-app-*`` folder).

    Call before gradio builds the page: it reads ``GRADIO_TEMP_DIR`` when components and the server are
    created. Returns the folder.
    """
    path = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="offseg-app-"))
    path.mkdir(parents=True, exist_ok=True)
    os.environ[TEMP_ENV] = str(path)
    return path


def quiet_gradio() -> None:
    """No usage statistics or version checks (no outside connection)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"


@dataclass
class RunningApp:
    """A started app: the gr.Blocks, its local URL, the public URL when shared, its temp folder."""

    demo: object
    url: str
    share_url: str | None
    temp_dir: Path

    def close(self) -> None:
        """Stop the server."""
        self.demo.close()


def start(
    ctx, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False, temp_dir=None
) -> RunningApp:
    """Build the page for ``ctx`` (an :class:`~offseg_vis.app.callbacks.AppContext`) and serve it in a
    background thread. ``port=None`` takes the first free port from 7860.

    Raises:
        OffSegError: the port is taken or the address cannot be bound.
    """
    quiet_gradio()
    # Tiny activations can turn into denormal floats, which CPUs process up to ~100x slower; flushing them
    # to zero changes no prediction (they are < 1e-38) and keeps latency steady. Process-wide: app only.
    torch.set_flush_denormal(True)
    folder = use_temp_dir(temp_dir) if temp_dir or TEMP_ENV not in os.environ else Path(os.environ[TEMP_ENV])
    with warnings.catch_warnings():
        # pydantic complains about a field of gradio's own models on import; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*'alias' attribute.*")
        from offseg_vis.app.ui import build_app

    demo = build_app(ctx)
    try:
        _, url, share_url = demo.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            quiet=True,
            max_file_size=ctx.settings.limits.max_file_bytes,
            show_error=False,
            footer_links=["api", "settings"],
            run_history=False,
        )
    except OSError as err:
        where = f"{host}:{port}" if port else host
        raise OffSegError(
            f"The app could not listen on {where} ({err}); pass another --port, or stop the program using it."
        ) from None
    return RunningApp(demo, url, share_url, folder)
