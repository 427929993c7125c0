"""The model registry (rl_models) and trading episodes (rl_trading_episodes)."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Algorithm(models.TextChoices):
    PPO = "PPO", "PPO"
    A2C = "A2C", "A2C"
    MASKABLE_PPO = "MaskablePPO", "Maskable PPO"


class ModelStatus(models.TextChoices):
    TRAINING = "training", "training"
    READY = "ready", "ready (trained and evaluated, awaiting promotion)"
    ACTIVE = "active", "active"
    RETIRED = "retired", "retired"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


class EpisodeMode(models.TextChoices):
    """Live does not exist: the product never places real orders."""

    TRAINING = "training", "training"
    EVALUATION = "evaluation", "evaluation"
    PAPER = "paper", "paper"


class RLModel(models.Model):
    """One trained (or training) version of a named agent."""

    name = models.CharField(max_length=100)
    version = models.PositiveIntegerField()
    algorithm = models.CharField(max_length=16, choices=Algorithm.choices)
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default="training")
    hyperparameters = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    markets = models.JSONField(default=list)
    observation_spec_version = models.PositiveIntegerField(default=1)
    artifact_path = models.CharField(max_length=500, blank=True, default="")
    artifact_sha256 = models.CharField(max_length=64, blank=True, default="")
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    trained_at = models.DateTimeField(null=True, blank=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    promoted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="promoted_models",
    )
    # Set when a promotion went past the gate: who, when, why, and what the gate said.
    promotion_override = models.JSONField(default=dict, blank=True)

    class Meta:
        db_table = "rl_models"
        ordering = ["name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="rl_model_name_version"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(status="active"),
                name="rl_model_one_active_per_name",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=ModelStatus.values), name="rl_model_status"
            ),
            models.CheckConstraint(
                condition=models.Q(algorithm__in=Algorithm.values), name="rl_model_algorithm"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.status})"


class TradingEpisode(models.Model):
    """One run of a model over a stretch of market time, with its summary metrics.

    Money is in price_e4 units ($0.0001); returns, Sharpe, drawdown and win rate are ratios.
    """

    model = models.ForeignKey(RLModel, on_delete=models.CASCADE, related_name="episodes")
    mode = models.CharField(max_length=16, choices=EpisodeMode.choices)
    markets = models.JSONField(default=list)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    steps = models.PositiveIntegerField(default=0)
    total_reward = models.FloatField(default=0.0)
    total_return = models.FloatField(default=0.0, help_text="final value / initial value - 1")
    sharpe = models.FloatField(null=True, blank=True)
    max_drawdown = models.FloatField(default=0.0, help_text="largest peak-to-trough fall, ratio")
    win_rate = models.FloatField(null=True, blank=True)
    fees_paid_e4 = models.BigIntegerField(default=0)
    final_positions = models.JSONField(default=dict, blank=True)
    equity_curve = models.JSONField(default=list, blank=True)
    action_ids = models.JSONField(
        default=list, blank=True, help_text="per step, the action id of each market (compact)"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "rl_trading_episodes"
        ordering = ["-started_at"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(mode__in=EpisodeMode.values), name="rl_episode_mode"
            ),
        ]
        indexes = [models.Index(fields=["model", "mode"], name="rl_episode_model_mode")]

    def __str__(self) -> str:
        return f"{self.mode} episode of {self.model} at {self.started_at:%Y-%m-%d %H:%M}"


class HeldOutTraces(models.Model):
    """The per-step records of a version's held-out evaluation (agent and every baseline),
    from which pooled metrics and their block-bootstrap intervals are recomputed across
    versions (a walk-forward's folds). ``data`` is a compressed numpy archive of plain arrays,
    read with ``allow_pickle=False`` (nothing stored here can execute code)."""

    model = models.OneToOneField(RLModel, on_delete=models.CASCADE, related_name="heldout_traces")
    data = models.BinaryField()

    class Meta:
        db_table = "rl_heldout_traces"

    def __str__(self) -> str:
        return f"held-out traces of {self.model}"


class WalkForwardStatus(models.TextChoices):
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed (no fold finished)"


class WalkForward(models.Model):
    """A walk-forward evaluation: rolling (train, test) windows over the recorded history,
    each fold a registry version trained by its own Celery task, aggregated when the last
    fold ends (per-fold and pooled held-out metrics with block-bootstrap intervals)."""

    name = models.CharField(max_length=100, help_text="the folds are versions of this name")
    status = models.CharField(
        max_length=16, choices=WalkForwardStatus.choices, default=WalkForwardStatus.RUNNING
    )
    base_spec = models.JSONField(default=dict, help_text="the run spec of every fold")
    settings = models.JSONField(default=dict, help_text="folds, train segments, span")
    metrics = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "rl_walkforwards"
        ordering = ["-created_at"]
        verbose_name = "walk-forward evaluation"

    def __str__(self) -> str:
        return f"walk-forward {self.pk} of {self.name} ({self.status})"


class WalkForwardFold(models.Model):
    walkforward = models.ForeignKey(WalkForward, on_delete=models.CASCADE, related_name="folds")
    index = models.PositiveIntegerField()
    model = models.OneToOneField(RLModel, on_delete=models.CASCADE, related_name="fold")
    train_start = models.DateTimeField()
    train_end = models.DateTimeField()
    test_start = models.DateTimeField()
    test_end = models.DateTimeField()
    worker = models.CharField(max_length=200, blank=True, default="", help_text="who trained it")

    class Meta:
        db_table = "rl_walkforward_folds"
        ordering = ["walkforward", "index"]
        constraints = [
            models.UniqueConstraint(fields=["walkforward", "index"], name="rl_fold_index"),
        ]

    def __str__(self) -> str:
        return f"fold {self.index} of {self.walkforward}"


class StudyStatus(models.TextChoices):
    RUNNING = "running", "running"
    DONE = "done", "done (budget spent)"


class Study(models.Model):
    """An Optuna hyperparameter study stored in this database (Optuna's RDB storage, study
    ``optuna_name``); its trials run as Celery tasks on any worker, each a registry version."""

    name = models.CharField(max_length=100, help_text="each trial is a version of this name")
    optuna_name = models.CharField(max_length=200, unique=True)
    status = models.CharField(
        max_length=16, choices=StudyStatus.choices, default=StudyStatus.RUNNING
    )
    base_spec = models.JSONField(default=dict, help_text="every trial's spec before its parameters")
    search_space = models.JSONField(default=dict)
    n_trials = models.PositiveIntegerField(help_text="the budget: trials to run")
    evaluate_every = models.PositiveIntegerField(
        default=0, help_text="timesteps between intermediate held-out evaluations (pruning)"
    )
    objective = models.CharField(max_length=64, default="pnl_per_hour_dollars")
    best = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "rl_studies"
        ordering = ["-created_at"]
        verbose_name_plural = "studies"

    def __str__(self) -> str:
        return f"study {self.pk} of {self.name} ({self.status})"


class StudyTrial(models.Model):
    """One trial of a study: its Optuna number and parameters, the worker that ran it, its
    intermediate and final held-out values, and the registry version it trained."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="trials")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=16, default="running")
    params = models.JSONField(default=dict)
    value = models.FloatField(null=True, blank=True)
    intermediate = models.JSONField(default=list, blank=True, help_text="[[timesteps, value]]")
    worker = models.CharField(max_length=200, blank=True, default="")
    model = models.OneToOneField(
        RLModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="trial"
    )
    error = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "rl_study_trials"
        ordering = ["study", "number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "number"], name="rl_trial_number"),
        ]

    def __str__(self) -> str:
        return f"trial {self.number} of {self.study}"
