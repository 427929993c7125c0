"""Walk-forward evaluations and hyperparameter studies in the admin: start forms, and
read-only pages with per-fold / per-trial figures (registered from ``TrainingConfig.ready``,
beside the registry's admin in :mod:`apps.training.admin`).

Every action calls a service; every figure's format comes from :mod:`apps.ui.formatting`."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from apps.simulation.metrics import METRICS
from apps.training import selectors, services, tuning
from apps.training.models import Study, WalkForward
from apps.training.spec import (
    ALGORITHMS,
    MAX_HYPERPARAMETERS_JSON_CHARS,
    NON_FIELD,
    RunSpec,
    SpecError,
    parse_json,
)
from apps.training.walkforward import MAX_FOLDS, MAX_TRAIN_SEGMENTS, rolling_windows
from apps.ui import formatting


class ExperimentForm(forms.Form):
    """The run spec shared by every fold or trial (their windows are set per fold/trial)."""

    name = forms.SlugField(max_length=100, help_text="each fold or trial is a version of it")
    algorithm = forms.ChoiceField(choices=[(a, a) for a in ALGORITHMS])
    markets = forms.CharField(help_text="comma-separated tickers (1 to 10)")
    total_timesteps = forms.IntegerField(min_value=1, initial=20_000)
    seed = forms.IntegerField(min_value=0, initial=0)
    step_s = forms.FloatField(min_value=0.001, initial=1.0, label="env step (s)")
    episode_steps = forms.IntegerField(min_value=2, initial=300)
    eval_episodes = forms.IntegerField(min_value=1, max_value=100, initial=3)
    hyperparameters = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        initial="{}",
        help_text='JSON, e.g. {"n_steps": 512}',
    )

    def clean_hyperparameters(self) -> dict:
        try:
            value = parse_json(self.cleaned_data.get("hyperparameters") or "{}")
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value

    def clean_markets(self) -> list[str]:
        return [m.strip().upper() for m in self.cleaned_data["markets"].split(",") if m.strip()]

    def base_spec(self, windows: tuple) -> RunSpec:
        data = self.cleaned_data
        ts, te, es, ee = windows
        return RunSpec(
            name=data["name"],
            algorithm=data["algorithm"],
            markets=data["markets"],
            train_start=ts,
            train_end=te,
            eval_start=es,
            eval_end=ee,
            total_timesteps=data["total_timesteps"],
            hyperparameters=data["hyperparameters"],
            seed=data["seed"],
            step_s=data["step_s"],
            episode_steps=data["episode_steps"],
            eval_episodes=data["eval_episodes"],
        )

    def add_spec_errors(self, exc: SpecError) -> None:
        for key, problems in exc.errors.items():
            for problem in problems:
                self.add_error(key if key in self.fields and key != NON_FIELD else None, problem)


class WalkForwardForm(ExperimentForm):
    folds = forms.IntegerField(min_value=1, max_value=MAX_FOLDS, initial=4)
    train_segments = forms.IntegerField(
        min_value=1,
        max_value=MAX_TRAIN_SEGMENTS,
        initial=3,
        help_text="the training window's length, in test windows",
    )


def form_page(admin_obj: admin.ModelAdmin, request: HttpRequest, form: forms.Form, title: str):
    return TemplateResponse(
        request,
        "admin/training/experiment_form.html",
        {
            **admin_obj.admin_site.each_context(request),
            "title": title,
            "form": form,
            "opts": admin_obj.model._meta,
        },
    )


def metrics_table(policies: list[tuple[str, dict[str, Any]]]) -> str:
    """Held-out metrics of several policies, each figure with its 95 % interval."""
    if not policies:
        return "-"
    head = format_html_join("", "<th>{}</th>", ((label,) for label, _ in policies))
    rows = format_html_join(
        "",
        "<tr><th>{}</th>{}</tr>",
        (
            (
                formatting.metric_label(name),
                format_html_join(
                    "",
                    "<td>{} <small>{}</small></td>",
                    (
                        (
                            formatting.metric(values.get(name), name),
                            formatting.interval(values.get(f"{name}_ci"), name),
                        )
                        for _, values in policies
                    ),
                ),
            )
            for name in METRICS
        ),
    )
    return format_html("<table><tr><th></th>{}</tr>{}</table>", head, rows)


def versus_line(versus: dict[str, Any] | None) -> str:
    versus = versus or {}
    low, high = (versus.get("ci") or [None, None])[:2]
    if versus.get("difference") is None:
        return "-"
    name = "pnl_per_hour_dollars"
    return format_html(
        "{} {}",
        formatting.metric(versus["difference"], name),
        formatting.interval([low, high], name),
    )


@admin.register(WalkForward)
class WalkForwardAdmin(admin.ModelAdmin):
    """Read-only: a walk-forward is started with the form and ends by itself."""

    list_display = (
        "id",
        "name",
        "status",
        "fold_count",
        "pooled_pnl",
        "pooled_versus",
        "created_at",
    )
    list_filter = ("status", "name")
    readonly_fields = (
        "name",
        "status",
        "settings",
        "created_at",
        "finished_at",
        "folds_table",
        "pooled_table",
        "pooled_versus",
    )
    fields = readonly_fields
    change_list_template = "admin/training/walkforward/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started through the "Start a walk-forward" form

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request)

    @admin.display(description="folds")
    def fold_count(self, obj: WalkForward) -> int:
        return obj.folds.count()

    @admin.display(description="pooled held-out P&L per hour")
    def pooled_pnl(self, obj: WalkForward) -> str:
        agent = (obj.metrics.get("pooled") or {}).get("evaluation") or {}
        name = "pnl_per_hour_dollars"
        if agent.get(name) is None:
            return ""
        return format_html(
            "{} {}",
            formatting.metric(agent[name], name),
            formatting.interval(agent.get(f"{name}_ci"), name),
        )

    @admin.display(description="pooled agent minus no trading ($/h, 95% CI)")
    def pooled_versus(self, obj: WalkForward) -> str:
        return versus_line((obj.metrics.get("pooled") or {}).get("versus_no_trading"))

    @admin.display(description="folds")
    def folds_table(self, obj: WalkForward) -> str:
        rows = []
        for fold in obj.folds.select_related("model").order_by("index"):
            url = reverse("admin:training_rlmodel_change", args=[fold.model_id])
            agent = (fold.model.metrics or {}).get("evaluation") or {}
            name = "pnl_per_hour_dollars"
            rows.append(
                (
                    fold.index,
                    url,
                    str(fold.model),
                    formatting.seconds_time(fold.train_start),
                    formatting.seconds_time(fold.test_start),
                    formatting.seconds_time(fold.test_end),
                    formatting.metric(agent.get(name), name),
                    formatting.interval(agent.get(f"{name}_ci"), name),
                    versus_line((fold.model.metrics or {}).get("versus_no_trading")),
                    fold.worker,
                )
            )
        body = format_html_join(
            "",
            "<tr><td>{}</td><td><a href='{}'>{}</a></td><td>{}</td><td>{}</td><td>{}</td>"
            "<td>{} <small>{}</small></td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html(
            "<table><tr><th>fold</th><th>version</th><th>train from</th><th>test from</th>"
            "<th>test to</th><th>held-out P&amp;L/h</th><th>minus no trading</th>"
            "<th>worker</th></tr>{}</table>",
            body,
        )

    @admin.display(description="pooled held-out evaluation (all folds' episodes)")
    def pooled_table(self, obj: WalkForward) -> str:
        pooled = obj.metrics.get("pooled") or {}
        policies = [("agent", pooled.get("evaluation") or {})]
        policies += list((pooled.get("baselines") or {}).items())
        return metrics_table([p for p in policies if p[1]])

    def get_urls(self):  # type: ignore[no-untyped-def]
        start = path(
            "start/",
            self.admin_site.admin_view(self.start_view),
            name="training_walkforward_start",
        )
        return [start, *super().get_urls()]

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("training.change_rlmodel"):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            form = WalkForwardForm(request.POST)
            if form.is_valid():
                walkforward = self._start(form)
                if walkforward is not None:
                    self.message_user(request, f"queued {walkforward}", messages.SUCCESS)
                    url = reverse("admin:training_walkforward_change", args=[walkforward.pk])
                    return HttpResponseRedirect(url)
        else:
            markets = selectors.recorded_markets()
            form = WalkForwardForm(initial={"markets": ",".join(markets)})
        return form_page(self, request, form, "Start a walk-forward evaluation")

    @staticmethod
    def _start(form: WalkForwardForm) -> WalkForward | None:
        data = form.cleaned_data
        span = selectors.recorded_span(data["markets"])
        if span is None:
            form.add_error("markets", "no recorded deltas for these markets")
            return None
        try:
            windows = rolling_windows(
                *span, folds=data["folds"], train_segments=data["train_segments"]
            )
            return services.start_walkforward(
                spec=form.base_spec(windows[0]),
                folds=data["folds"],
                train_segments=data["train_segments"],
                span=span,
            )
        except ValueError as exc:  # SpecError is one too: each problem by its field
            if isinstance(exc, SpecError):
                form.add_spec_errors(exc)
            else:
                form.add_error(None, str(exc))
        except services.RegistryError as exc:
            form.add_error(None, str(exc))
        return None


class StudyForm(ExperimentForm):
    n_trials = forms.IntegerField(
        min_value=1, max_value=tuning.MAX_TRIALS, initial=10, label="budget (trials)"
    )
    evaluate_every = forms.IntegerField(
        min_value=0,
        required=False,
        label="evaluate every (timesteps)",
        help_text="intermediate held-out evaluations for the pruner; empty = a quarter of the run",
    )
    search_space = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text='JSON, e.g. {"learning_rate": {"type": "float", "low": 1e-5, "high": 0.01, '
        '"log": true}}; empty = learning rate, gamma and entropy coefficient',
    )

    def clean_search_space(self) -> dict | None:
        raw = (self.cleaned_data.get("search_space") or "").strip()
        if not raw:
            return None
        try:
            value = parse_json(raw, max_chars=MAX_HYPERPARAMETERS_JSON_CHARS)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        if not isinstance(value, dict):
            raise forms.ValidationError("must be a JSON object")
        return value


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    """Read-only: a study is started with the form; its trial tasks fill it in."""

    list_display = (
        "id",
        "name",
        "status",
        "trials_done",
        "best_value",
        "best_params",
        "created_at",
    )
    list_filter = ("status", "name")
    readonly_fields = (
        "name",
        "status",
        "optuna_name",
        "search_space",
        "evaluate_every",
        "created_at",
        "finished_at",
        "trials_done",
        "best_value",
        "best_params",
        "best_version",
        "trials_table",
        "plots",
    )
    fields = readonly_fields
    change_list_template = "admin/training/study/change_list.html"
    change_form_template = "admin/training/study/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # started through the "Start a study" form

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False if obj is not None else super().has_change_permission(request)

    @admin.display(description="trials (ended / budget)")
    def trials_done(self, obj: Study) -> str:
        return f"{obj.trials.exclude(state='running').count()} / {obj.n_trials}"

    @admin.display(description="best held-out P&L per hour")
    def best_value(self, obj: Study) -> str:
        value = (obj.best or {}).get("value")
        return "" if value is None else formatting.metric(value, tuning.OBJECTIVE)

    @admin.display(description="best parameters")
    def best_params(self, obj: Study) -> str:
        params = (obj.best or {}).get("params") or {}
        return ", ".join(
            f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
        )

    @admin.display(description="best version")
    def best_version(self, obj: Study) -> str:
        best = obj.best or {}
        if not best.get("model_id"):
            return ""
        url = reverse("admin:training_rlmodel_change", args=[best["model_id"]])
        return format_html("<a href='{}'>{} v{}</a>", url, obj.name, best.get("version"))

    @admin.display(description="trials")
    def trials_table(self, obj: Study) -> str:
        rows = []
        for trial in obj.trials.select_related("model").order_by("number"):
            link = (
                format_html(
                    "<a href='{}'>v{}</a>",
                    reverse("admin:training_rlmodel_change", args=[trial.model_id]),
                    trial.model.version,
                )
                if trial.model
                else "-"
            )
            params = ", ".join(
                f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in trial.params.items()
            )
            value = "" if trial.value is None else formatting.metric(trial.value, tuning.OBJECTIVE)
            rows.append((trial.number, trial.state, link, value, params, trial.worker))
        body = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            rows,
        )
        return format_html(
            "<table><tr><th>trial</th><th>state</th><th>version</th>"
            "<th>held-out P&amp;L/h</th><th>parameters</th><th>worker</th></tr>{}</table>",
            body,
        )

    @admin.display(description="Optuna's plots")
    def plots(self, obj: Study) -> str:
        return format_html_join(
            "",
            "<img src='{}' alt='{}' loading='lazy' style='max-width: 48%; margin: 4px'>",
            (
                (reverse("admin:training_study_plot", args=[obj.pk, kind]), kind)
                for kind in tuning.PLOTS
            ),
        )

    def get_urls(self):  # type: ignore[no-untyped-def]
        wrap = self.admin_site.admin_view
        return [
            path("start/", wrap(self.start_view), name="training_study_start"),
            path("<int:pk>/plot/<str:kind>.png", wrap(self.plot_view), name="training_study_plot"),
            *super().get_urls(),
        ]

    def plot_view(self, request: HttpRequest, pk: int, kind: str) -> HttpResponse:
        study = Study.objects.filter(pk=pk).first()
        if study is None or not self.has_view_permission(request, study):
            return HttpResponse("Not found", status=404)
        try:
            png = tuning.plot_png(study, kind)
        except ValueError as exc:
            return HttpResponse(str(exc), status=404, content_type="text/plain")
        return HttpResponse(png, content_type="image/png")

    def start_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("training.change_rlmodel"):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            form = StudyForm(request.POST)
            if form.is_valid():
                study = self._start(form)
                if study is not None:
                    self.message_user(request, f"queued {study}", messages.SUCCESS)
                    return HttpResponseRedirect(
                        reverse("admin:training_study_change", args=[study.pk])
                    )
        else:
            form = StudyForm(initial={"markets": ",".join(selectors.recorded_markets())})
        return form_page(self, request, form, "Start a hyperparameter study")

    @staticmethod
    def _start(form: StudyForm) -> Study | None:
        data = form.cleaned_data
        span = selectors.recorded_span(data["markets"])
        if span is None:
            form.add_error("markets", "no recorded deltas for these markets")
            return None
        (ts, te), (es, ee) = selectors.split_windows(*span)
        try:
            return services.start_study(
                spec=form.base_spec((ts, te, es, ee)),
                n_trials=data["n_trials"],
                search_space=data["search_space"],
                evaluate_every=data["evaluate_every"],
            )
        except SpecError as exc:
            form.add_spec_errors(exc)
        return None
