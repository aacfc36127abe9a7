"""Batches of at most N tokens, as the official code trains en-ro (petl/dynamic_batching.py, which calls
fairseq's batch_by_size), instead of a fixed number of sentences.

As there: an example costs max(source length, target length) tokens; examples are ordered by that cost
(ties in a seeded random order), packed greedily so that a batch's padded cost, its number of examples × its
longest example, stays within the limit, and trimmed to a multiple of `batch_size_multiple` when a batch has
at least that many examples (fairseq's required_batch_size_multiple). The batches are built once per seed;
each epoch visits them in a seeded shuffled order with the most expensive batch first (so that running out of
memory shows at the first step, not hours in). Deterministic per seed and epoch, so an interrupted run resumes
on the same batches: HF Trainer skips the batches already trained and sets the epoch on this sampler.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .errors import DataError


def check_max_tokens(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DataError(f"params.yaml {where}: expected a positive whole number, got {value!r}")
    return value


def example_costs(dataset) -> np.ndarray:
    """max(len(input_ids), len(labels)) per row of a tokenized seq2seq dataset, read from its Arrow columns
    (610K en-ro pairs as Python lists would take gigabytes)."""
    import pyarrow.compute as pc

    costs = []
    for table in dataset.select_columns(["input_ids", "labels"]).with_format("arrow").iter(batch_size=50_000):
        sources = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)
        targets = pc.list_value_length(table["labels"]).to_numpy(zero_copy_only=False)
        costs.append(np.maximum(sources, targets))
    return np.concatenate(costs) if costs else np.zeros(0, dtype=np.int64)


def order_by_cost(costs: np.ndarray, seed: int) -> np.ndarray:
    """Indices sorted by cost; a seeded shuffle first, so that equal costs come in a random but fixed order."""
    shuffled = np.random.default_rng(seed).permutation(len(costs))
    return shuffled[np.argsort(costs[shuffled], kind="stable")]


def pack(order: Sequence[int], costs: np.ndarray, max_tokens: int, batch_size_multiple: int = 1) -> list[list[int]]:
    """Greedy batches along `order` whose padded cost (examples × longest) is at most `max_tokens`."""
    batches, batch, longest = [], [], 0
    for index in order:
        cost = int(costs[index])
        if cost > max_tokens:
            raise DataError(f"training example {int(index)} is {cost} tokens long (max of source and target), more "
                            f"than max_tokens_per_batch {max_tokens}; raise the limit or truncate shorter")
        while batch and (len(batch) + 1) * max(longest, cost) > max_tokens:
            kept = _trimmed_size(len(batch), batch_size_multiple)
            batches.append(batch[:kept])
            batch = batch[kept:]  # what the trim left over starts the next batch (if this one still fits)
            longest = max((int(costs[i]) for i in batch), default=0)
        batch.append(int(index))
        longest = max(longest, cost)
    if batch:
        batches.append(batch)
    return batches


def _trimmed_size(size: int, multiple: int) -> int:
    """fairseq's rule: the largest multiple of `multiple` that fits, unless the batch is smaller than one."""
    return multiple * (size // multiple) if size >= multiple else size


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """A batch sampler for torch's DataLoader(batch_sampler=...): lists of dataset indices, every example once
    per epoch, each batch within `max_tokens` of padded cost."""

    def __init__(self, costs: Sequence[int], max_tokens: int, seed: int, batch_size_multiple: int = 1):
        self.costs = np.asarray(costs, dtype=np.int64)
        self.max_tokens = check_max_tokens(max_tokens, "max_tokens_per_batch")
        self.seed, self.epoch = seed, 0
        self.batches = pack(order_by_cost(self.costs, seed), self.costs, max_tokens, batch_size_multiple)

    def padded_cost(self, batch: Sequence[int]) -> int:
        return len(batch) * int(self.costs[list(batch)].max())

    def set_epoch(self, epoch: int) -> None:  # called by HF Trainer (and accelerate) before each epoch
        self.epoch = epoch

    def epoch_order(self, epoch: int) -> list[int]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.batches)).tolist()
        largest = max(order, key=lambda b: self.padded_cost(self.batches[b]))
        order.remove(largest)
        return [largest] + order

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.epoch_order(self.epoch):
            yield list(self.batches[b])

    def __len__(self) -> int:
        return len(self.batches)


def sampler_for(dataset, max_tokens: int, seed: int, batch_size_multiple: int = 1) -> TokenBudgetBatchSampler:
    return TokenBudgetBatchSampler(example_costs(dataset), max_tokens, seed, batch_size_multiple)


def token_batching_trainer(trainer_class, sampler: TokenBudgetBatchSampler):
    """`trainer_class` (HF Trainer or Seq2SeqTrainer) whose training batches come from `sampler`; evaluation
    keeps its sentence batches (the official scripts evaluate with per_device_eval_batch_size too).

    Only get_train_dataloader changes: Trainer's own _get_dataloader passes a batch sampler through only for its
    BatchRebalanceSampler. Resuming works as for sentence batches: accelerate's skip_first_batches wraps this
    sampler and Trainer calls set_epoch on it, so a resumed run sees the batches an uninterrupted one would."""
    from functools import partial

    from torch.utils.data import DataLoader
    from transformers.trainer_utils import seed_worker

    class TokenBatchingTrainer(trainer_class):
        def get_train_dataloader(self):
            dataset = self._remove_unused_columns(self.train_dataset, description="Training")
            if len(dataset) != len(sampler.costs):
                raise DataError(f"token batches are for {len(sampler.costs)} examples, the training set has "
                                f"{len(dataset)}")
            workers = self.args.dataloader_num_workers
            loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=workers,
                                pin_memory=self.args.dataloader_pin_memory,
                                worker_init_fn=partial(seed_worker, num_workers=workers, rank=self.args.process_index))
            return self.accelerator.prepare(loader)

    TokenBatchingTrainer.__name__ = TokenBatchingTrainer.__qualname__ = f"TokenBatching{trainer_class.__name__}"
    return TokenBatchingTrainer
