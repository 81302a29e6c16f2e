"""CTC over the projected tokens: the pre-alignment stage of the projectors before the LLM loss, and the
auxiliary loss kept on during it (`ctc_weight`). Our addition, not in the reference recipe."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...modeling.model import AVSRModel
from ..distributed import World
from .distributed import sum_gradients
from .options import TrainOptions
from .reports import CTCStepInfo
from .steps import FRAMES_PER_SECOND, length_batches


def ctc_prealign(
    model: AVSRModel,
    frames: list[torch.Tensor],
    targets: list[list[int]],
    rates: list[int],
    options: TrainOptions,
    on_step: Callable[[CTCStepInfo], None] | None = None,
    modality: str = "audio",
    world: World | None = None,
) -> list[float]:
    """Pre-align a modality's projectors with the LLM's token embeddings: CTC over the projected tokens
    scored against the (frozen) input embeddings of the transcripts' tokens, so the LLM's first look at the
    audio or video is a blank-padded spelling of the transcript. Only the tokens that occur in the
    transcripts (plus a blank) are classes, which keeps the logits small. Returns the loss per step.

    A step takes `grad_accum` batches per rank; with a `world` the ranks' gradients are summed, so the steps
    are those of one process with N times the grad_accum."""
    projector = model.projectors[modality]
    ctc = CTCClasses.of(model, targets)
    blank_bias = ctc.blank_bias.requires_grad_(True)
    params = [*projector.parameters(), blank_bias]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=options.ctc_lr, betas=(0.9, 0.98), weight_decay=options.weight_decay)
    rng = random.Random(options.seed + 7)
    lengths = [f.shape[0] for f in frames]
    fps = FRAMES_PER_SECOND[modality]
    losses = []
    size, rank = (world.size, world.rank) if world else (1, 0)
    projector.train()
    try:
        for epoch in range(options.ctc_epochs):
            batches = length_batches(lengths, fps, options, random.Random(options.seed * 1000 + 500 + epoch))
            per_step = options.grad_accum * size
            for start in range(0, len(batches), per_step):
                group = batches[start : start + per_step]
                drawn = [rng.choice(rates) for _ in group]  # every rank draws every batch's rate: same stream
                opt.zero_grad()
                loss_sum = 0.0
                for batch, rate in list(zip(group, drawn, strict=True))[rank::size]:
                    loss = ctc.loss(projector, [frames[i] for i in batch], [targets[i] for i in batch], rate)
                    (loss / len(group)).backward()
                    loss_sum += float(loss.detach()) / len(group)
                if world:
                    (loss_sum,) = sum_gradients(params, [loss_sum])
                torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
                opt.step()
                losses.append(loss_sum)
                if on_step:
                    on_step(CTCStepInfo(len(losses), epoch, losses[-1], modality))
    finally:
        projector.eval()
        blank_bias.requires_grad_(False)  # the projector stays trainable for the LLM phase
    return losses


@dataclass
class CTCClasses:
    """CTC classes for projected tokens: a blank (index 0) and every token the transcripts use (EOS is no
    class), scored by dot products with the LLM's frozen input embeddings of those tokens."""

    classes: torch.Tensor  # (1 + n_tokens, hidden): row 0, the blank, is zeros
    index: dict[int, int]  # token id -> class
    blank_bias: torch.Tensor  # added to the blank's logit (trained by pre-alignment)

    @classmethod
    def of(cls, model: AVSRModel, targets: list[list[int]]) -> CTCClasses:
        vocab = sorted({t for tg in targets for t in tg[:-1]})
        emb = model.llm.get_input_embeddings().weight.detach()
        classes = torch.cat([torch.zeros(1, emb.shape[1], device=emb.device), emb[vocab].float()])
        index = {t: i + 1 for i, t in enumerate(vocab)}
        return cls(classes, index, torch.zeros(1, device=emb.device))

    def loss(
        self, projector, frames: list[torch.Tensor], targets: list[list[int]], rate: int
    ) -> torch.Tensor:
        """Mean CTC loss of one batch of projected frames against its transcripts' token classes."""
        outs = projector(frames, rate)
        logits = [o.float() @ self.classes.T for o in outs]
        for lg in logits:
            lg[:, 0] = lg[:, 0] + self.blank_bias
        tgt = [torch.tensor([self.index[t] for t in tg[:-1]]) for tg in targets]
        t_max = max(lg.shape[0] for lg in logits)
        padded = torch.zeros(t_max, len(frames), self.classes.shape[0], device=self.classes.device)
        for k, lg in enumerate(logits):
            padded[: lg.shape[0], k] = lg
        return F.ctc_loss(
            padded.log_softmax(-1),
            torch.cat(tgt),
            torch.tensor([lg.shape[0] for lg in logits]),
            torch.tensor([len(t) for t in tgt]),
            blank=0,
            zero_infinity=True,
        )
