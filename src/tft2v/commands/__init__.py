"""CLI command groups. Each module defines a typer app (or commands) that ``tft2v.cli`` mounts;
heavy imports (torch, diffusers) stay inside the command functions so ``--help`` is fast."""
