"""Every decision an agent takes, in paper trading and in evaluation (rl_trading_actions)."""

from __future__ import annotations

from django.db import models


class TradingAction(models.Model):
    """One agent decision for one market at one step.

    Units: ``price_e4``/``fee_e4``/``cash_after_e4`` in $0.0001, ``quantity_filled_e2`` and
    ``position_after_e2`` in 0.01 contracts (a NO position is negative YES exposure only in
    features; here ``position_after_e2`` is signed: + YES contracts, - NO contracts).
    ``mask_bits`` has bit i set when action i was allowed. ``refusal`` says why an action
    other than HOLD was not carried out (``untrusted``, ``no_liquidity``, ``cash``, ``position``,
    ... from the simulation, or ``kill_switch``); empty when it was carried out or held.
    ``reward`` is the market's share of the change of the portfolio's value marked to mid
    since the previous decision, over the starting cash (see :mod:`apps.trading.actor`).
    """

    episode = models.ForeignKey(
        "training.TradingEpisode", on_delete=models.CASCADE, related_name="actions"
    )
    step = models.PositiveIntegerField()
    time = models.DateTimeField()
    market_ticker = models.CharField(max_length=128)
    action_id = models.PositiveSmallIntegerField()
    action_type = models.CharField(max_length=16)
    action_size = models.PositiveIntegerField(default=0, help_text="requested contracts")
    mask_bits = models.BigIntegerField(default=0)
    price_e4 = models.IntegerField(null=True, blank=True, help_text="average fill price")
    quantity_filled_e2 = models.BigIntegerField(default=0)
    fee_e4 = models.BigIntegerField(default=0)
    position_after_e2 = models.BigIntegerField(default=0)
    cash_after_e4 = models.BigIntegerField(default=0)
    reward = models.FloatField(default=0.0)
    model_version = models.PositiveIntegerField()
    refusal = models.CharField(
        max_length=32, blank=True, default="", help_text="why the action was not carried out"
    )

    class Meta:
        db_table = "rl_trading_actions"
        ordering = ["episode", "step", "market_ticker"]
        constraints = [
            models.UniqueConstraint(
                fields=["episode", "step", "market_ticker"], name="rl_action_unique_decision"
            ),
        ]
        indexes = [models.Index(fields=["market_ticker", "time"], name="rl_action_market_time")]

    def __str__(self) -> str:
        return f"step {self.step} {self.market_ticker} {self.action_type}"

    def allowed_actions(self) -> list[int]:
        return [i for i in range(64) if self.mask_bits >> i & 1]
