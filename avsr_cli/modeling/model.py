"""The AVSR model: frozen encoders -> compression -> projectors -> LLM (with LoRA) that writes the transcript.

Input sequence, as Llama-AVSR models/modeling_AVSRLLM.py `prepare_inputs` builds it (and Omni-AVSR alike):
    [BOS] <audio> A_1..A_n </audio> <video> V_1..V_m </video> PROMPT  -> generate
Training appends the transcript tokens + EOS, with labels -100 everywhere before the transcript.
An initial prompt (names, jargon: `--initial-prompt`) is text the reference never trained with: it
goes in as CONTEXT_TEMPLATE at CONTEXT_PLACEMENT (chosen by recipes/avsr_tiny_en/names_ab.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .config import MAX_CONTEXT_TOKENS, ModelConfig
from .ctc_head import CharCTCHead
from .decoding import DecodingOptions, StepCounter, generation_config, repeat_guard
from .greedy import greedy_decode
from .llama import LlamaDecoder
from .llm import TokenIds, set_active_adapters
from .projector import ModalityProjector

IGNORE_INDEX = -100

CONTEXT_TEMPLATE = "Context: {text}\n"
# Where the framed prompt goes: after BOS before the media, just before the instruction, or just after it.
# Before the media disturbs the built-in model least and kept the most names (docs/usage.md); after the
# instruction it stops transcribing.
CONTEXT_PLACEMENTS = ("before-media", "before-instruction", "after-instruction")
CONTEXT_PLACEMENT = "before-media"


@dataclass
class ModalityInputs:
    """Encoder frames per clip for one modality, and the compression rate to apply."""

    frames: list[torch.Tensor]
    rate: int


class AVSRModel(nn.Module):
    """Projectors + LLM around frozen encoders; `generate` and `loss` take per-clip encoder frames."""

    def __init__(
        self,
        config: ModelConfig,
        llm: nn.Module,
        tokenizer,
        ids: TokenIds,
        audio_encoder: nn.Module | None = None,
        video_encoder: nn.Module | None = None,
        lora_merged: bool = False,
    ) -> None:
        """`lora_merged`: `llm` is a plain LLM into whose weights the LoRA is (or will be) folded."""
        super().__init__()
        self.config = config
        self.llm = llm
        self.tokenizer = tokenizer
        self.ids = ids
        self.audio_encoder = audio_encoder
        self.video_encoder = video_encoder
        c, hidden = config, config.llm.hidden_size
        self.projectors = nn.ModuleDict()
        for modality, enc in (("audio", c.audio_encoder), ("video", c.video_encoder)):
            if enc is not None and c.rates(modality):
                self.projectors[modality] = ModalityProjector(
                    enc.dim,
                    c.rates(modality),
                    c.compression.mode,
                    c.projector.intermediate_size,
                    hidden,
                    c.projector.layernorm,
                )
        self._prompt_cache: dict[str, list[int]] = {}
        self._context_cache: dict[str, list[int]] = {}
        self.context_placement = CONTEXT_PLACEMENT  # one of CONTEXT_PLACEMENTS (names_ab.py compares them)
        self._active: list[str] | None = None
        self.lora_merged = lora_merged  # LoRA folded into the LLM (merge_lora(), or at load)
        self.aligner: CharCTCHead | None = None  # the checkpoint's character CTC head (word timestamps)

    # -- input construction -------------------------------------------------------------------------
    def prompt_ids(self, mode: str) -> list[int]:
        """Prompt token ids without BOS/EOS.

        The reference tokenizes with a post-processor that adds BOS and EOS and keeps `input_ids[:, 1:-1]`
        (Llama-AVSR modeling L401; Omni-AVSR prompt_* buffers); tokenizing without special tokens is equal.
        """
        if mode not in self._prompt_cache:
            self._prompt_cache[mode] = self.tokenizer(
                self.config.prompts[mode], add_special_tokens=False
            ).input_ids
        return self._prompt_cache[mode]

    def context_ids(self, text: str | None) -> list[int]:
        """Tokens of an initial prompt framed as CONTEXT_TEMPLATE; none for None or blank text. Raises
        UsageError for a prompt over MAX_CONTEXT_TOKENS tokens."""
        if text is None or not text.strip():
            return []
        text = text.strip()
        if text not in self._context_cache:  # every batch of a call gives the same prompt
            n = len(self.tokenizer(text, add_special_tokens=False).input_ids)
            if n > MAX_CONTEXT_TOKENS:
                raise UsageError(
                    f"the initial prompt is {n} tokens long; {self.config.name} takes at most "
                    f"{MAX_CONTEXT_TOKENS}"
                )
            framed = CONTEXT_TEMPLATE.format(text=text)
            self._context_cache[text] = self.tokenizer(framed, add_special_tokens=False).input_ids
        return self._context_cache[text]

    def target_ids(self, text: str) -> list[int]:
        """Transcript tokens + EOS; plain text with no leading space, as the reference trains."""
        return self.tokenizer(text, add_special_tokens=False).input_ids + [self.ids.eos]

    def _embed(self, ids: list[int]) -> torch.Tensor:
        emb = self.llm.get_input_embeddings()
        return emb(torch.tensor(ids, device=emb.weight.device))

    def sequences(
        self,
        mode: str,
        audio: ModalityInputs | None,
        video: ModalityInputs | None,
        targets: list[list[int]] | None = None,
        context: str | Sequence[str | None] | None = None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per clip: the input embedding sequence (L_i, H) and its labels (L_i,); `context`: an initial
        prompt given to every clip, or one per clip (see `context_ids`)."""
        proj_a = self.projectors["audio"](audio.frames, audio.rate) if audio is not None else None
        proj_v = self.projectors["video"](video.frames, video.rate) if video is not None else None
        n = len((audio or video).frames)
        contexts = [context] * n if context is None or isinstance(context, str) else list(context)
        if len(contexts) != n:
            raise ValueError(f"{len(contexts)} contexts for {n} clips")
        ids = self.ids
        # the LLM's residual stream (our decoder may keep its matrices narrower: LlamaDecoder.from_dir)
        dtype = getattr(self.llm, "stream_dtype", None) or self.llm.get_input_embeddings().weight.dtype
        seqs, labels = [], []
        for i in range(n):
            prompt, head = self.prompt_ids(mode), []
            extra = self.context_ids(contexts[i])
            if extra and self.context_placement == "before-media":
                head = extra
            elif extra:
                prompt = extra + prompt if self.context_placement == "before-instruction" else prompt + extra
            parts = [self._embed([ids.bos])] if ids.bos is not None else []
            if head:
                parts.append(self._embed(head))
            # Audio block first, then video: the reference inserts video after BOS, then audio after BOS.
            if proj_a is not None:
                parts += [self._embed([ids.audio_start]), proj_a[i], self._embed([ids.audio_end])]
            if proj_v is not None:
                parts += [self._embed([ids.video_start]), proj_v[i], self._embed([ids.video_end])]
            parts.append(self._embed(prompt))
            n_context = sum(p.shape[0] for p in parts)
            label = [IGNORE_INDEX] * n_context
            if targets is not None:
                parts.append(self._embed(targets[i]))
                label += targets[i]
            seqs.append(torch.cat([p.to(dtype) for p in parts]))
            labels.append(torch.tensor(label, device=seqs[-1].device))
        return seqs, labels

    def _pad_left(self, seqs: list[torch.Tensor], labels: list[torch.Tensor]):
        """Left-pad a batch (so generation continues every row from its last real token)."""
        length = max(s.shape[0] for s in seqs)
        hidden, device, dtype = seqs[0].shape[1], seqs[0].device, seqs[0].dtype
        pad_emb = self._embed([self.ids.pad])[0].to(dtype)
        embeds = pad_emb.expand(len(seqs), length, hidden).clone()
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=device)
        lab = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long, device=device)
        for i, (s, y) in enumerate(zip(seqs, labels, strict=True)):
            embeds[i, length - s.shape[0] :] = s
            mask[i, length - s.shape[0] :] = 1
            lab[i, length - s.shape[0] :] = y
        return embeds, mask, lab

    def merge_lora(self) -> None:
        """Fold a single LoRA adapter into the LLM's weights (W + scale * B A, peft's merge_and_unload), for
        inference: one matrix product per layer instead of three. Task-specific adapters cannot be merged."""
        if self.config.lora is None or self.lora_merged:
            return
        names = self.config.lora.adapter_names()
        if len(names) != 1:
            raise ValueError(f"{len(names)} LoRA adapters (one per task) cannot be merged into one LLM")
        self.llm = self.llm.merge_and_unload()
        self.lora_merged = True

    def _activate(self, mode: str) -> None:
        """Switch the LLM's LoRA to the adapters of `mode` (shared and/or the task's)."""
        if self.config.lora is not None and not self.lora_merged:
            names = self.config.lora.active_adapters(mode)
            if names != self._active:
                set_active_adapters(self.llm, names)
                self._active = names

    # -- training and decoding ----------------------------------------------------------------------
    def loss(
        self,
        mode: str,
        audio: ModalityInputs | None,
        video: ModalityInputs | None,
        targets: list[list[int]],
        contexts: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy over the transcript tokens (+EOS) of a batch; `contexts`: an initial
        prompt per clip (None: none), so a model learns to use what `--initial-prompt` gives it."""
        self._activate(mode)
        seqs, labels = self.sequences(mode, audio, video, targets, contexts)
        embeds, mask, lab = self._pad_left(seqs, labels)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        # The labels are each row's suffix (left padding), so only the last (longest target + 1) positions
        # predict one: the LM head and its float32 logits run on those alone, not on the audio and prompt
        # (the same loss; `tests/test_model.py`). The slice's first label is ignored in every row.
        keep = max(len(t) for t in targets) + 1
        return self.llm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            labels=lab[:, -keep:],
            logits_to_keep=keep,
        ).loss

    @torch.no_grad()
    def generate(
        self, mode: str, audio: ModalityInputs | None, video: ModalityInputs | None, options: DecodingOptions
    ) -> list[str]:
        """Transcripts for a batch of clips, decoded as the reference decodes them."""
        return [h.text for h in self.decode(mode, audio, video, options)]

    @torch.no_grad()
    def decode(
        self,
        mode: str,
        audio: ModalityInputs | None,
        video: ModalityInputs | None,
        options: DecodingOptions,
        on_step: Callable[[int], None] | None = None,
        context: str | None = None,
    ) -> list[Hypothesis]:
        """Transcripts for a batch of clips with their mean token log-probability (the scores the search
        computes anyway: asking for them changes no token); `on_step(n)` is told each token step; `context`:
        an initial prompt for every clip."""
        self._activate(mode)
        seqs, labels = self.sequences(mode, audio, video, context=context)
        embeds, mask, _ = self._pad_left(seqs, labels)
        defaults = self.config.decoding
        if (options.num_beams or defaults.num_beams) == 1 and options.strategy != "reference":
            # generate()'s greedy search without its set-up, and without importing transformers: the
            # GenerationConfig would give the same budget (generation_config)
            eos, pad = self.ids.eos, self.ids.pad
            budget = options.max_new_tokens or defaults.max_new_tokens
            guard = repeat_guard(options, defaults)
            sequences, steps = greedy_decode(self.llm, embeds, mask, eos, pad, budget, on_step, guard)
        else:
            gen = generation_config(options, defaults, self.ids)
            sequences, steps = self._search(embeds, mask, gen, options.seed, on_step)
        # Reference: batch_decode(skip_special_tokens=True, clean_up_tokenization_spaces=False), nothing else.
        texts = self.tokenizer.batch_decode(
            sequences, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )
        return [
            Hypothesis(text.strip(), _mean_logprob(ids, row, self.ids.eos))
            for text, ids, row in zip(texts, sequences, steps, strict=True)
        ]

    def _search(
        self, embeds: torch.Tensor, mask: torch.Tensor, gen, seed: int, on_step: Callable[[int], None] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, per-token scores) of generate()'s beam search or sampling, sampling seeded by `seed`."""
        generator_state = None
        if gen.do_sample:
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
        # avsr's Llama decoder decodes greedily only: generate() runs on transformers' Llama over its weights
        llm = self.llm.to_transformers() if isinstance(self.llm, LlamaDecoder) else self.llm
        try:
            with warnings.catch_warnings():
                # the guard is meant for the generated tokens only, not the prompt (what it warns about)
                warnings.filterwarnings("ignore", message="Passing `no_repeat_ngram_size` with")
                out = llm.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    generation_config=gen,
                    logits_processor=[StepCounter(on_step)] if on_step else None,
                )
        finally:
            if generator_state is not None:
                torch.random.set_rng_state(generator_state)
        beams = gen.num_beams > 1
        # Beam search scores are log-softmax already; sampling scores are (processed) logits.
        steps = llm.compute_transition_scores(
            out.sequences, out.scores, out.beam_indices if beams else None, normalize_logits=not beams
        )
        return out.sequences, steps


@dataclass
class Hypothesis:
    """One decoded transcript and its mean log-probability per token (EOS included), as Whisper's
    avg_logprob: near 0 when the model is sure, below about -1 when it is guessing."""

    text: str
    avg_logprob: float


def _mean_logprob(ids: torch.Tensor, scores: torch.Tensor, eos: int) -> float:
    """Mean of the scores of the tokens up to and including the first EOS (padding after it excluded)."""
    ends = (ids == eos).nonzero()
    n = int(ends[0, 0]) + 1 if len(ends) else len(ids)
    n = min(n, scores.shape[0])
    if n == 0:
        return 0.0
    return float(scores[:n].float().mean())
