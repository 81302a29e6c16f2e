"""Training the projectors + LoRA on top of the frozen encoders and LLM (the Llama-AVSR recipe).

Reference recipe (Llama-AVSR train.py / README commands): AdamW betas (0.9, 0.98), weight
decay 0.1, lr 1e-3 for ASR/AVSR and 5e-4 for VSR, cosine schedule (`--warmup-epochs 0` by default),
gradient clip 10, batches by a frame budget (`--max-frames-audiovisual 1500`: 60 s of 25 fps frames per
device), bf16 on GPU, only projectors and LoRA trainable, checkpoint averaging of the last epochs. Omni-AVSR's
matryoshka training draws one compression rate per step (`random.choice`), so any trained rate can be picked
at inference.

Modes: asr (Whisper frames), vsr (AV-HuBERT frames of the mouth crops), avsr (both; the audio cut or padded
to 640 samples per video frame, Llama-AVSR av_dataset.py), or several at once (Omni-AVSR multi-task: every
step computes each task's loss on the same batch and rates and trains on their (weighted) mean, Omni-AVSR
lightning_OmniAVSR.py `training_step`).

Here the frozen encoders run once per clip under `torch.no_grad()` and their frames are cached on disk
(`features.FeatureCache`), so epochs after the first cost only the projector + LLM. The price: no per-epoch
video augmentation (the reference's train-time RandomCrop(88) + AdaptiveTimeMask); the crops use the
test-time centre crop.

Modules: `options` (TrainOptions, TrainSetup and the settings' checks), `run` (`train(setup)`, the entry
point), `features` (the encoder-feature cache), `steps` (batches, trained parameters, precision), `ctc`
(CTC pre-alignment and the auxiliary loss), `trainer` (the Trainer), `state` (the resumable state),
`distributed` (the data-parallel collectives), `reports` (StepInfo, TrainResult). Nothing is imported here,
so `reports` stays light for the CLI's progress display.
"""
