"""The `avsr` command: one module per command group, each a thin layer over one library call.

Heavy library imports (numpy, torch, http) stay inside the command functions, each marked `# lazy:`:
`avsr --help` must not pay for them.
"""

from . import crop_mouth, evaluate, models, train, transcribe
from .app import Command, app, entrypoint

# The one registry of commands, in the order `avsr --help` lists them.
app.command(cls=Command)(transcribe.transcribe)
app.command("export-subtitles", cls=Command)(transcribe.export_subtitles)
app.command(cls=Command)(evaluate.evaluate)
app.command("evaluate-merge", cls=Command)(evaluate.evaluate_merge)
app.command("evaluate-report", cls=Command)(evaluate.evaluate_report)
app.command(cls=Command)(train.train)
app.command("download-checkpoint", cls=Command)(models.download_checkpoint)
app.command("import-checkpoint", cls=Command)(models.import_checkpoint)
app.command("crop-mouth", cls=Command)(crop_mouth.crop_mouth)

__all__ = ["app", "entrypoint"]
