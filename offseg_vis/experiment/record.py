"""One line of the results file: a finished run, as a :class:`RunRecord`.

The JSON is the record's :meth:`RunRecord.to_dict`, key for key and in the same order as the lines
already in ``docs/experiment/results.jsonl``; :meth:`RunRecord.from_dict` reads every such line back
to the same dict (records made before scene presets existed have no ``scene`` / ``scene_options``
and keep having none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from offseg_vis.experiment.budget import Budget


@dataclass
class ValScores:
    """Val metrics of a run, fractions in [0, 1] (None: not finite, e.g. a diverged run).

    Attributes:
        scenes: val scenes evaluated.
        mIoU, aAcc, mAcc: dataset-level metrics (mmseg protocol).
        per_class_IoU: class name -> IoU, in class order.
    """

    scenes: int
    mIoU: float | None
    aAcc: float | None
    mAcc: float | None
    per_class_IoU: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenes": self.scenes,
            "mIoU": self.mIoU,
            "aAcc": self.aAcc,
            "mAcc": self.mAcc,
            "per_class_IoU": dict(self.per_class_IoU),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValScores:
        return cls(d["scenes"], d["mIoU"], d["aAcc"], d["mAcc"], dict(d["per_class_IoU"]))


@dataclass
class RunRecord:
    """One finished run (one arm x one seed under one budget).

    Attributes:
        arm, variant, style: the arm (``variant@style[+scene]``) and its parts.
        scene, scene_options: the scene preset ("" for none) and its FashionScenes parameters;
            None in records written before presets existed (then they are left out of the JSON).
        seed: the run's seed (training stream, data order, augmentation, initialisation).
        classifier, classifier_options, paper: the classifier the variant builds; ``paper`` is False
            for our own variants.
        model: the zoo name of the model.
        budget, budget_key: what every run of the comparison shares, and its digest.
        steps: optimiser steps done.
        val: :class:`ValScores`.
        train_loss_final: mean loss of the last tenth of the steps.
        logit_scale: the learnt logit scale of ``offset-scaled-ln`` (None for the other variants).
        params: the model's parameter count.
        wall_time_s: training and final evaluation, summed over every attempt.
        resumed: the run continued an interrupted attempt.
        machine: where it ran: {"torch", "threads", "device", "cpu", "python"} (a plain dict: its keys
            are the benchmarks' environment line, defined there).
        git_commit, generator_version: the code and scene generator that made it (part of the run's
            identity, :func:`~offseg_vis.experiment.results.run_key`).
        run_dir: the run folder relative to the work root.
        finished: local time stamp, ISO 8601.
    """

    arm: str
    variant: str
    style: float
    seed: int
    classifier: str
    classifier_options: dict[str, Any]
    paper: bool
    model: str
    budget: Budget
    budget_key: str
    steps: int
    val: ValScores
    train_loss_final: float | None
    logit_scale: float | None
    params: int
    wall_time_s: float
    resumed: bool
    machine: dict[str, Any]
    git_commit: str | None
    generator_version: str | None
    run_dir: str
    finished: str
    scene: str | None = None
    scene_options: dict[str, Any] | None = None

    @property
    def scene_name(self) -> str:
        """The scene preset ("" for plain scenes, also in records older than presets)."""
        return self.scene or ""

    @property
    def code_version(self) -> tuple[str | None, str | None]:
        """(git commit, scene generator version): runs pair only within one code version."""
        return (self.git_commit, self.generator_version)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of the results file (key order as written since the first runs)."""
        head: dict[str, Any] = {"arm": self.arm, "variant": self.variant, "style": self.style}
        if self.scene is not None:
            head["scene"] = self.scene
        if self.scene_options is not None:
            head["scene_options"] = dict(self.scene_options)
        return {
            **head,
            "seed": self.seed,
            "classifier": self.classifier,
            "classifier_options": dict(self.classifier_options),
            "paper": self.paper,
            "model": self.model,
            "budget": self.budget.to_dict(),
            "budget_key": self.budget_key,
            "steps": self.steps,
            "val": self.val.to_dict(),
            "train_loss_final": self.train_loss_final,
            "logit_scale": self.logit_scale,
            "params": self.params,
            "wall_time_s": self.wall_time_s,
            "resumed": self.resumed,
            "machine": dict(self.machine),
            "git_commit": self.git_commit,
            "generator_version": self.generator_version,
            "run_dir": self.run_dir,
            "finished": self.finished,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Inverse of :meth:`to_dict`.

        Raises:
            KeyError, TypeError: ``d`` is not a run record (a missing or unknown key).
        """
        unknown = set(d) - _KEYS
        if unknown:
            raise TypeError(f"unknown run record keys {sorted(unknown)}")
        fields = {k: d[k] for k in _KEYS if k in d}
        fields["budget"] = Budget.from_dict(d["budget"])
        fields["val"] = ValScores.from_dict(d["val"])
        return cls(**fields)


_KEYS = set(RunRecord.__dataclass_fields__)
