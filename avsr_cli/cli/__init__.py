"""The `avsr` command: one module per command group, each a thin layer over one library call.

Command modules import the library inside their functions: `avsr --help` must not pay for torch.
"""

from . import crop_mouth, evaluate, models, train, transcribe
from .app import app, entrypoint

# The one registry of commands, in the order `avsr --help` lists them.
app.command()(transcribe.transcribe)
app.command("export-subtitles")(transcribe.export_subtitles)
app.command()(evaluate.evaluate)
app.command()(train.train)
app.command("download-checkpoint")(models.download_checkpoint)
app.command("import-checkpoint")(models.import_checkpoint)
app.command("crop-mouth")(crop_mouth.crop_mouth)

__all__ = ["app", "entrypoint"]
