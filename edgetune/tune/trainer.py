"""The Trainer subclass: the loss from logits at supervised positions only (edgetune.tune.logits),
resuming a multi-process CPU run, and reading FSDP adapter checkpoints back (edgetune.tune.fsdp_checkpoint)."""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from edgetune.data.render import IGNORE
from edgetune.tune.logits import supervised_logits


class SupervisedLogitsTrainer(Trainer):
    _eval_sums: list[float] | None = None  # (summed loss, supervised tokens) while evaluating

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        head = self.accelerator.unwrap_model(model).get_output_embeddings() if "labels" in inputs else None
        if head is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        logits, targets, outputs = supervised_logits(model, head, inputs, labels)
        losses = F.cross_entropy(logits.float(), targets, reduction="none")
        loss = losses.sum()
        if self._eval_sums is not None and not model.training:
            self._count_eval_tokens(losses.detach().double(), labels, inputs)
        if num_items_in_batch is None:
            loss = loss / max(targets.numel(), 1)
        else:  # the same normalisation as transformers' own causal-LM loss under gradient accumulation
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
            if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _count_eval_tokens(self, per_target: torch.Tensor, labels, inputs) -> None:
        """Each example's summed loss and supervised tokens, gathered the way the Trainer gathers
        its own metrics: under several processes accelerate pads the last batches with repeated
        examples, and gather_for_metrics drops them (summing them counted some rows twice)."""
        predicting = labels[:, 1:] != IGNORE
        positions = inputs.get("position_ids")
        if positions is not None and labels.shape[0] == 1:  # a packed batch: examples restart at 0
            starts = positions == 0
            example = (starts[:, :-1].cumsum(1) - 1)[predicting]
            count = int(starts.sum())
        else:
            rows = torch.arange(labels.shape[0], device=labels.device)
            example = rows.unsqueeze(1).expand_as(predicting)[predicting]
            count = labels.shape[0]
        sums = torch.zeros(count, dtype=torch.float64, device=per_target.device)
        tokens = torch.zeros(count, dtype=torch.float64, device=per_target.device)
        sums.index_add_(0, example, per_target)
        tokens.index_add_(0, example, torch.ones_like(per_target))
        gathered = self.accelerator.gather_for_metrics(torch.stack([sums, tokens], 1))
        self._eval_sums[0] += float(gathered[:, 0].sum())
        self._eval_sums[1] += float(gathered[:, 1].sum())

    def evaluate(self, *args, **kwargs):
        """An evaluation leaves torch's random state as it found it: its DataLoader draws a seed from
        the global generator, which moved every later dropout mask, so two runs that differed only
        in train.eval_steps trained different adapters."""
        cpu = torch.get_rng_state()
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            torch.set_rng_state(cpu)
            if cuda is not None:
                torch.cuda.set_rng_state_all(cuda)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        """The validation loss as the mean over every supervised token, as training's loss is: the
        Trainer averages its batches' means by examples, which weighs a short answer's tokens more
        and moves with batch_size (on varied answers, 6.029 at batch 1 against 6.001 per token)."""
        self._eval_sums = [0.0, 0.0]
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            loss, tokens = self._eval_sums  # every process's, gathered batch by batch
        finally:
            self._eval_sums = None
        if tokens > 0 and f"{metric_key_prefix}_loss" in output.metrics:
            output.metrics[f"{metric_key_prefix}_loss"] = loss / tokens
        return output

    def _sorted_checkpoints(self, *args, use_mtime: bool = False, **kwargs) -> list[str]:
        """What rotation (save_total_limit) counts and may delete: the committed checkpoints, by step.
        The Trainer rotates before on_save, where CommitCheckpoints marks the new one complete: counted
        there, rotation deleted the last committed checkpoint, and a kill before the mark left only the
        best to resume from, however old. The new one counts from the next save (or the rotation at
        the end of training, `rotate_checkpoints`)."""
        from pathlib import Path

        from edgetune.tune.callbacks import COMPLETE

        found = super()._sorted_checkpoints(*args, use_mtime=False, **kwargs)
        return [p for p in found if (Path(p) / COMPLETE).is_file()]

    def rotate_checkpoints(self) -> None:
        """save_total_limit once the last checkpoint is committed (the main process only)."""
        if self.args.should_save:
            self._rotate_checkpoints(output_dir=self.args.output_dir)

    def _load_optimizer_and_scheduler(self, checkpoint):
        # with several processes transformers maps the optimizer state to args.device, which on a CPU
        # is "cpu:0": torch.load cannot restore to that name, so a multi-process CPU run could not resume
        if checkpoint is None or self.args.world_size == 1 or self.args.device.type != "cpu":
            return super()._load_optimizer_and_scheduler(checkpoint)
        from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME

        optimizer = os.path.join(checkpoint, OPTIMIZER_NAME)
        if os.path.isfile(optimizer):
            self.optimizer.load_state_dict(torch.load(optimizer, map_location="cpu", weights_only=True))
            self.lr_scheduler.load_state_dict(
                torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True)
            )

    def _fsdp1(self) -> bool:
        """FSDP 1, whose root wrapper hides the PeftModel from peft; FSDP 2 goes through accelerate."""
        return self.is_fsdp_enabled and getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1) == 1

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._fsdp1():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from edgetune.tune.fsdp_checkpoint import load_fsdp_adapter

        load_fsdp_adapter(self.accelerator.state.fsdp_plugin, model or self.model, resume_from_checkpoint)

    def _load_best_model(self):
        if not self._fsdp1():
            return super()._load_best_model()
        from edgetune.tune.fsdp_checkpoint import load_fsdp_adapter

        load_fsdp_adapter(self.accelerator.state.fsdp_plugin, self.model, self.state.best_model_checkpoint)


def training_args(recipe, run_dir, setup, has_valid: bool, eval_first: bool = False):
    """The Trainer's arguments. Make them before loading the model: creating them starts the
    launcher's process group and picks this rank's GPU, which loading reads (bitsandbytes places
    4-bit weights on the current GPU, FSDP loads real weights on rank 0 only, DeepSpeed ZeRO-3
    partitions while loading). eval_first: the validation loss at step 0, before the first update."""
    from transformers import TrainingArguments

    t = recipe.train
    return TrainingArguments(
        output_dir=str(run_dir / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        # "constant" alone ignores warmup_ratio: the warmup every other schedule has would be lost
        lr_scheduler_type="constant_with_warmup" if t.scheduler == "constant" else t.scheduler,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim=setup.optim,
        bf16=setup.bf16,
        use_cpu=setup.device == "cpu",
        seed=t.seed,
        data_seed=t.seed,
        eval_strategy="steps" if has_valid else "no",
        # the loss before training is measured inside train(), on the model as the launcher wrapped it:
        # a Trainer.evaluate() before train() marks the bare model prepared, and accelerate then never
        # wraps it in DDP/FSDP (every rank would train alone, gradients never averaged)
        eval_on_start=eval_first and has_valid,
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        load_best_model_at_end=has_valid,
        # early stopping's count of evaluations without improvement goes on from the checkpoint
        restore_callback_states_from_checkpoint=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=1,
        # a NaN loss is logged as NaN (StopOnNonFinite stops there), not as the mean of earlier ones
        logging_nan_inf_filter=False,
        logging_dir=str(run_dir / "tensorboard"),
        report_to=["tensorboard"] if t.tensorboard else [],
        disable_tqdm=True,
        # packed batches hold no padding, and no attention mask: counting "non-padding" there skips
        # every EOS wherever pad == EOS (SmolLM2)
        include_num_input_tokens_seen="all" if t.packing else "non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        save_safetensors=True,
        ddp_find_unused_parameters=False,
        prediction_loss_only=True,
    )


def build_trainer(
    recipe,
    args,
    model,
    tokenizer,
    train_examples,
    valid_examples,
    callbacks: list[Any],
):
    """The Trainer exactly as `edgetune tune` runs it (the throughput benchmark uses this too).

    args: from `training_args`, made before the model was loaded."""
    from transformers.trainer_callback import PrinterCallback

    from edgetune.tune.batches import EncodedDataset, make_collator

    trainer = SupervisedLogitsTrainer(
        model=model,
        args=args,
        train_dataset=EncodedDataset(train_examples),
        eval_dataset=EncodedDataset(valid_examples) if valid_examples else None,
        data_collator=make_collator(tokenizer.pad_token_id, recipe.train.packing),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # our Progress and MetricsLog replace it
    return trainer
