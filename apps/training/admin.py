"""The model registry in the admin: actions call the services; a form starts a run."""

from __future__ import annotations

from datetime import datetime

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.training import selectors, services
from apps.training.artifacts import ArtifactError
from apps.training.models import ModelStatus, RLModel, TradingEpisode
from apps.training.spec import ALGORITHMS, RunSpec, SpecError, parse_json, validate_spec


def episode_plot_img(episode: TradingEpisode, *, width_px: int) -> str:
    """The episode's equity and drawdown PNG (drawn by /rl/episodes/<id>/plot.png)."""
    if episode.pk is None:
        return ""
    url = reverse("dashboard:episode-plot", kwargs={"pk": episode.pk})
    return format_html(
        '<a href="{}"><img src="{}" width="{}" alt="equity and drawdown of episode {}" '
        'class="episode-plot" loading="lazy" style="max-width: 100%; height: auto"></a>',
        url,
        url,
        width_px,
        episode.pk,
    )


class TradingEpisodeInline(admin.TabularInline):
    model = TradingEpisode
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "mode",
        "started_at",
        "steps",
        "total_return",
        "sharpe",
        "max_drawdown",
        "win_rate",
        "plot",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="equity / drawdown")
    def plot(self, obj: TradingEpisode) -> str:
        return episode_plot_img(obj, width_px=300)


def add_spec_errors(form: forms.Form, exc: SpecError) -> None:
    """Show each of the validator's problems next to its field (the rest above the form)."""
    for key, problems in exc.errors.items():
        field = key if key in form.fields else None
        for problem in problems:
            form.add_error(field, problem)


class TrainingRunForm(forms.Form):
    """Validated fields for a run; the spec validation runs again in the service."""

    name = forms.SlugField(max_length=100)
    algorithm = forms.ChoiceField(choices=[(a, a) for a in ALGORITHMS])
    markets = forms.CharField(help_text="comma-separated tickers (1 to 10)")
    train_start = forms.DateTimeField()
    train_end = forms.DateTimeField()
    eval_start = forms.DateTimeField(help_text="held-out time: must not overlap training")
    eval_end = forms.DateTimeField()
    total_timesteps = forms.IntegerField(min_value=1, initial=20_000)
    seed = forms.IntegerField(initial=0)
    step_s = forms.FloatField(min_value=0.001, initial=1.0, label="env step (s)")
    episode_steps = forms.IntegerField(min_value=2, initial=300)
    n_envs = forms.IntegerField(
        min_value=1,
        max_value=64,
        initial=8,
        required=False,
        label="envs",
        help_text="stepped per policy forward pass (n_steps is per env); empty = 1",
    )
    hyperparameters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        initial="{}",
        help_text='JSON, e.g. {"learning_rate": 0.0003, "n_steps": 512}',
    )
    mode = forms.ChoiceField(
        choices=[("training", "training")],
        initial="training",
        help_text="runs only ever train; live trading does not exist",
    )

    def clean_hyperparameters(self) -> dict:
        raw = self.cleaned_data.get("hyperparameters") or "{}"
        try:
            value = parse_json(raw)  # bounded: size, nesting, finite numbers only
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def clean(self) -> dict:
        """The spec validator (bounds, types, memory budget) runs here, per field."""
        data = super().clean()
        if not self.errors:
            try:
                validate_spec(self.spec(), memory_budget_bytes=services.memory_budget_bytes())
            except SpecError as exc:
                add_spec_errors(self, exc)
        return data

    def clean_markets(self) -> list[str]:
        return [m.strip().upper() for m in self.cleaned_data["markets"].split(",") if m.strip()]

    def spec(self) -> RunSpec:
        data = self.cleaned_data
        return RunSpec(
            name=data["name"],
            algorithm=data["algorithm"],
            markets=data["markets"],
            train_start=data["train_start"],
            train_end=data["train_end"],
            eval_start=data["eval_start"],
            eval_end=data["eval_end"],
            total_timesteps=data["total_timesteps"],
            hyperparameters=data["hyperparameters"],
            seed=data["seed"],
            step_s=data["step_s"],
            episode_steps=data["episode_steps"],
            n_envs=data.get("n_envs") or 1,
        )


@admin.register(RLModel)
class RLModelAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "version",
        "algorithm",
        "status",
        "progress_display",
        "held_out_return",
        "held_out_sharpe",
        "vs_no_trading",
        "gate",
        "promoted_by",
        "promoted_at",
    )
    list_filter = ("status", "algorithm", "name")
    search_fields = ("name",)
    readonly_fields = [*(f.name for f in RLModel._meta.fields), "tensorboard"]
    inlines = [TradingEpisodeInline]
    actions = ["promote", "force_promote", "rollback", "retire", "cancel"]
    change_list_template = "admin/training/rlmodel/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start through the "Start a training run" form

    def has_delete_permission(self, request: HttpRequest, obj: RLModel | None = None) -> bool:
        # An active model, or one with paper episodes (their decisions are the audit trail,
        # and deleting the model would cascade to them), is retired, never deleted.
        if obj is not None and services.deletion_refused(obj):
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict:
        # Bulk deletion would not ask about each model: delete one at a time, from its page.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="progress")
    def progress_display(self, obj: RLModel) -> str:
        fraction = (obj.progress or {}).get("fraction")
        return "" if fraction is None else f"{fraction:.0%}"

    @admin.display(description="held-out return")
    def held_out_return(self, obj: RLModel) -> str:
        value = (obj.metrics.get("evaluation") or {}).get("mean_return")
        return "" if value is None else f"{value:+.3%}"

    @admin.display(description="held-out Sharpe per sqrt(h)")
    def held_out_sharpe(self, obj: RLModel) -> str:
        value = (obj.metrics.get("evaluation") or {}).get("sharpe")
        return "" if value is None else f"{value:.2f}"

    @admin.display(description="beats no trading", boolean=True)
    def vs_no_trading(self, obj: RLModel) -> bool | None:
        return obj.metrics.get("beats_no_trading")

    @admin.display(description="TensorBoard")
    def tensorboard(self, obj: RLModel) -> str:
        folder = services.tensorboard_dir(name=obj.name, version=obj.version)
        if not folder.is_dir():
            return "no TensorBoard run (yet)"
        return format_html(
            "<code>.venv/bin/tensorboard --logdir {}</code> (SB3's training scalars and the "
            "held-out metrics under heldout/)",
            folder,
        )

    @admin.display(description="promotion gate")
    def gate(self, obj: RLModel) -> str:
        if obj.promotion_override:
            forced = obj.promotion_override
            return f"forced by {forced.get('by')}: {forced.get('reason')}"
        if obj.status not in (ModelStatus.READY, ModelStatus.RETIRED):
            return ""
        return str(selectors.promotion_check(obj))

    @admin.action(description="Force promotion past the gate (asks for a reason, recorded)")
    def force_promote(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        reason = (request.POST.get("override_reason") or "").strip()
        if request.POST.get("confirm") and reason:
            self._each(
                request,
                queryset,
                "promoted past the gate",
                lambda m: services.promote_model(
                    model=m, promoted_by=request.user, override_reason=reason
                ),
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Force a promotion past the gate",
            "checks": [(m, selectors.promotion_check(m)) for m in queryset],
            "reason": reason,
            "error": "a reason is required" if request.POST.get("confirm") else "",
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/training/rlmodel/force_promote.html", context)

    def _each(self, request: HttpRequest, queryset: QuerySet, verb: str, call) -> None:
        for model in queryset:
            try:
                result = call(model)
            except (services.RegistryError, ArtifactError) as exc:
                self.message_user(request, f"{model}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{verb}: {result}", messages.SUCCESS)

    @admin.action(description="Promote to active")
    def promote(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(
            request,
            queryset,
            "promoted",
            lambda m: services.promote_model(model=m, promoted_by=request.user),
        )

    @admin.action(description="Roll back to the previously active version")
    def rollback(self, request: HttpRequest, queryset: QuerySet) -> None:
        for name in sorted(set(queryset.values_list("name", flat=True))):
            try:
                model = services.rollback_model(name=name, promoted_by=request.user)
            except (services.RegistryError, ArtifactError) as exc:
                self.message_user(request, f"{name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"rolled back: {model} is active", messages.SUCCESS)

    @admin.action(description="Retire")
    def retire(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "retired", lambda m: services.retire_model(model=m))

    @admin.action(description="Cancel training")
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "cancelled", lambda m: services.cancel_training_run(model=m))

    def get_urls(self):  # type: ignore[no-untyped-def]
        custom = [
            path(
                "start/",
                self.admin_site.admin_view(self.start_view),
                name="training_rlmodel_start",
            )
        ]
        return custom + super().get_urls()

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request) or not request.user.has_perm(
            "training.change_rlmodel"
        ):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            form = TrainingRunForm(request.POST)
            if form.is_valid():
                try:
                    model = services.start_training_run(spec=form.spec())
                except SpecError as exc:
                    add_spec_errors(form, exc)
                except services.RegistryError as exc:
                    form.add_error(None, str(exc))
                else:
                    self.message_user(request, f"queued {model}", messages.SUCCESS)
                    return HttpResponseRedirect(reverse("admin:training_rlmodel_changelist"))
        else:
            form = TrainingRunForm(initial=self._defaults())
        context = {
            **self.admin_site.each_context(request),
            "title": "Start a training run",
            "form": form,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/training/rlmodel/start.html", context)

    @staticmethod
    def _defaults() -> dict:
        markets = selectors.recorded_markets()
        span = selectors.recorded_span(markets) if markets else None
        if span is None:
            return {"markets": ",".join(markets)}
        (ts, te), (es, ee) = selectors.split_windows(*span)
        fmt = datetime.isoformat
        return {
            "markets": ",".join(markets),
            "train_start": fmt(ts),
            "train_end": fmt(te),
            "eval_start": fmt(es),
            "eval_end": fmt(ee),
        }


@admin.register(TradingEpisode)
class TradingEpisodeAdmin(admin.ModelAdmin):
    list_display = (
        "model",
        "mode",
        "started_at",
        "steps",
        "total_return",
        "sharpe",
        "max_drawdown",
        "win_rate",
        "fees_paid_e4",
    )
    list_filter = ("mode", "model__name")
    date_hierarchy = "started_at"
    readonly_fields = ["equity_plot", *(f.name for f in TradingEpisode._meta.fields)]

    @admin.display(description="equity and drawdown")
    def equity_plot(self, obj: TradingEpisode) -> str:
        return episode_plot_img(obj, width_px=900)

    # Episodes are results and audit trails: shown, never edited. One goes only with its
    # model, when that model may be deleted and the episode is not paper trading (Django asks
    # this for every episode a model's deletion would take with it).
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: TradingEpisode | None = None
    ) -> bool:
        if obj is None or not services.episode_may_go(obj):
            return False
        return super().has_delete_permission(request, obj)
