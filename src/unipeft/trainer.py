"""Adapter-only checkpoints for transformers' Trainer (and Seq2SeqTrainer, or any subclass).

A plain Trainer saves the whole model at every checkpoint (for BART-large, 1.6 GB a checkpoint for a few MB of
adapter) and `save_model` writes a model folder whose `from_pretrained` silently drops the adapter (its tensors
are unexpected keys to the base class). With `AdapterCheckpointsMixin` first in the bases, or
`adapter_trainer(Trainer)`:

- a checkpoint holds what trains (`Attachment.state_dict(fold=False)`: the modifications with their prefix MLPs
  unfolded, a task head, unfrozen biases) as adapter_model.safetensors + unipeft_config.json, next to Trainer's own
  optimizer, scheduler, RNG and trainer_state files; resuming copies those tensors back bit for bit, so a resumed
  run continues exactly as the uninterrupted one (load_best_model_at_end reads the same files);
- `save_model(folder)` writes the adapter as `unipeft.save` does (prefix MLPs folded) with the tokenizer and the
  training arguments, and no config.json or model weights: `from_pretrained(folder)` fails (it finds no model),
  it cannot return the base model without the adapter. Load it with `unipeft.load(base_model, folder)`, where
  `base_model` is the pretrained model it was trained on, or call `unipeft.merge_and_unload` (LoRA-style methods)
  before saving with `save_pretrained` for a folder plain transformers loads.

Single-process and DDP training; FSDP and DeepSpeed ZeRO-3 shard the parameters and are not supported.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from .attachment import attachment_of
from .checkpoint import restore, save


class AdapterCheckpointsMixin:
    """Put before the Trainer class in the bases: `class MyTrainer(AdapterCheckpointsMixin, Seq2SeqTrainer)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._unipeft_attachment()  # no method attached: say so now, not at the first checkpoint

    def _unipeft_attachment(self, model=None):
        model = self.model if model is None else model
        return attachment_of(self.accelerator.unwrap_model(model, keep_torch_compile=False))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # A checkpoint (the internal call) must resume training, so it keeps prefix MLPs as they train; a final
        # save is for inference and stores the smaller folded vectors.
        self._unipeft_fold = not _internal_call
        try:
            super().save_model(output_dir, _internal_call)
        finally:
            del self._unipeft_fold

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        save(self._unipeft_attachment(), output_dir, fold=getattr(self, "_unipeft_fold", True))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        restore(self._unipeft_attachment(model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        restore(self._unipeft_attachment(), self.state.best_model_checkpoint)


def adapter_trainer(trainer_class: type = Trainer) -> type:
    """`trainer_class` with adapter-only checkpoints (see the module docstring)."""
    cls = type(trainer_class.__name__, (AdapterCheckpointsMixin, trainer_class), {})
    cls.__qualname__ = trainer_class.__qualname__
    return cls


AdapterTrainer = adapter_trainer(Trainer)
AdapterTrainer.__name__ = AdapterTrainer.__qualname__ = "AdapterTrainer"

__all__ = ["AdapterCheckpointsMixin", "AdapterTrainer", "adapter_trainer"]
