"""The model registry in the admin: a read-only report per version, a side-by-side
comparison, confirmation pages before promotion and rollback, a form that starts a run
(:mod:`apps.training.forms`) and a run page that follows it live (status, progress, ETA,
learning curve, log tail, cancel; its state from :mod:`apps.training.progress`).

Actions call the services; the pages' data comes from :mod:`apps.training.selectors`, their
charts from :mod:`apps.training.charts` and every number's format from
:mod:`apps.ui.formatting`."""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.training import charts, dispatch, progress, selectors, services
from apps.training.artifacts import ArtifactError
from apps.training.forms import TrainingRunForm, add_spec_errors, initial_values, parse_markets
from apps.training.models import ModelStatus, RLModel, TradingEpisode
from apps.training.spec import MAX_MARKETS, SpecError
from apps.ui import formatting
from apps.ui.admin_filters import TimeRangeFilter
from apps.ui.admin_records import RecordPageMixin


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


class EpisodeFormats:
    """Formatted columns of an episode, shared by the inline and the episode list."""

    @admin.display(description="started", ordering="started_at")
    def started(self, obj: TradingEpisode) -> str:
        return formatting.ms_time(obj.started_at)

    @admin.display(description="return", ordering="total_return")
    def return_display(self, obj: TradingEpisode) -> str:
        return formatting.percent(obj.total_return, places=3, signed=True)

    @admin.display(description="Sharpe per sqrt(h)", ordering="sharpe")
    def sharpe_display(self, obj: TradingEpisode) -> str:
        return formatting.number(obj.sharpe, signed=True)

    @admin.display(description="max drawdown", ordering="max_drawdown")
    def drawdown_display(self, obj: TradingEpisode) -> str:
        return formatting.percent(obj.max_drawdown)

    @admin.display(description="win rate", ordering="win_rate")
    def win_rate_display(self, obj: TradingEpisode) -> str:
        return formatting.percent(obj.win_rate, places=1)

    @admin.display(description="fees", ordering="fees_paid_e4")
    def fees_display(self, obj: TradingEpisode) -> str:
        return formatting.dollars_e4(obj.fees_paid_e4)


class TradingEpisodeInline(EpisodeFormats, admin.TabularInline):
    model = TradingEpisode
    extra = 0
    can_delete = False
    show_change_link = True
    fields = (
        "mode",
        "started",
        "steps",
        "return_display",
        "sharpe_display",
        "drawdown_display",
        "win_rate_display",
        "fees_display",
        "plot",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="equity / drawdown")
    def plot(self, obj: TradingEpisode) -> str:
        return episode_plot_img(obj, width_px=300)


@admin.register(RLModel)
class RLModelAdmin(admin.ModelAdmin):
    """The registry. A version's page is a read-only report (see ``change_view``); promotion
    and rollback ask for confirmation on a page that shows what would change."""

    list_display = (
        "name",
        "version",
        "algorithm",
        "status",
        "progress_display",
        "held_out_pnl",
        "held_out_return",
        "held_out_sharpe",
        "vs_no_trading",
        "gate",
        "promoted_by",
        "promoted_at",
    )
    list_filter = ("status", "algorithm", "name")
    search_fields = ("name",)
    fieldsets = (
        (None, {"fields": ("name", "version", "algorithm", "status", "markets_display")}),
        ("Times", {"fields": ("created_display", "trained_display", "progress_display")}),
        ("Failure", {"fields": ("error",), "classes": ("collapse",)}),
    )
    readonly_fields = (
        "name",
        "version",
        "algorithm",
        "status",
        "markets_display",
        "created_display",
        "trained_display",
        "progress_display",
        "error",
    )
    inlines = [TradingEpisodeInline]
    actions = ["promote", "force_promote", "rollback", "compare", "retire", "cancel"]
    change_list_template = "admin/training/rlmodel/change_list.html"
    change_form_template = "admin/training/rlmodel/change_form.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start through the "Start a training run" form

    def get_fieldsets(self, request: HttpRequest, obj: RLModel | None = None) -> list:
        # The failure section only for a run that failed (or was cancelled with a note).
        return [f for f in self.fieldsets if f[0] != "Failure" or (obj and obj.error)]

    def has_change_permission(self, request: HttpRequest, obj: RLModel | None = None) -> bool:
        # A version is a record: its page is read-only (no Save). The registry's actions
        # (promote, roll back, retire, cancel) still need the user's change permission.
        if obj is not None:
            return False
        return super().has_change_permission(request)

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

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict | None = None,
    ) -> HttpResponse:
        model = self.get_object(request, object_id)
        context = dict(extra_context or {})
        if model is not None and self.has_view_permission(request, model):
            report = selectors.model_report(model)
            context["report"] = report
            context["charts"] = {
                "learning": charts.learning_curve_svg(
                    report.learning_curve, title=f"{model.name} v{model.version}: training"
                ),
                "equity": charts.equity_drawdown_svg(
                    {f"v{model.version}": report.equity_curves},
                    title=f"{model.name} v{model.version}: held-out evaluation",
                ),
            }
        return super().change_view(request, object_id, form_url, context)

    @admin.display(description="markets")
    def markets_display(self, obj: RLModel) -> str:
        return ", ".join(str(m) for m in obj.markets or [])

    @admin.display(description="created")
    def created_display(self, obj: RLModel) -> str:
        return formatting.seconds_time(obj.created_at)

    @admin.display(description="trained")
    def trained_display(self, obj: RLModel) -> str:
        return formatting.seconds_time(obj.trained_at)

    @admin.display(description="progress")
    def progress_display(self, obj: RLModel) -> str:
        """The run's progress, linked to its run page (live for a run in training)."""
        fraction = (obj.progress or {}).get("fraction")
        if fraction is None or obj.pk is None:
            return ""
        if obj.status in (ModelStatus.READY, ModelStatus.ACTIVE, ModelStatus.RETIRED):
            fraction = 1.0
        return format_html(
            '<a href="{}" class="kf-run-link">{}</a>',
            reverse("admin:training_rlmodel_run", args=[obj.pk]),
            formatting.percent(fraction, places=0),
        )

    @admin.display(description="held-out P&L per hour")
    def held_out_pnl(self, obj: RLModel) -> str:
        value = (obj.metrics.get("evaluation") or {}).get("pnl_per_hour_dollars")
        return "" if value is None else formatting.metric(value, "pnl_per_hour_dollars")

    @admin.display(description="held-out return")
    def held_out_return(self, obj: RLModel) -> str:
        value = (obj.metrics.get("evaluation") or {}).get("mean_return")
        return "" if value is None else formatting.percent(value, places=3, signed=True)

    @admin.display(description="held-out Sharpe per sqrt(h)")
    def held_out_sharpe(self, obj: RLModel) -> str:
        value = (obj.metrics.get("evaluation") or {}).get("sharpe")
        return "" if value is None else formatting.number(value)

    @admin.display(description="beats no trading", boolean=True)
    def vs_no_trading(self, obj: RLModel) -> bool | None:
        return obj.metrics.get("beats_no_trading")

    @admin.display(description="promotion gate")
    def gate(self, obj: RLModel) -> str:
        if obj.promotion_override:
            forced = obj.promotion_override
            return f"forced by {forced.get('by')}: {forced.get('reason')}"
        if obj.status not in (ModelStatus.READY, ModelStatus.RETIRED):
            return ""
        return str(selectors.promotion_check(obj))

    def _confirm_page(
        self, request: HttpRequest, template: str, **context: object
    ) -> TemplateResponse:
        return TemplateResponse(
            request,
            f"admin/training/rlmodel/{template}",
            {**self.admin_site.each_context(request), "opts": self.model._meta, **context},
        )

    @admin.action(
        description="Force promotion past the gate (asks for a reason, recorded)",
        permissions=["change"],
    )
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
        return self._confirm_page(
            request,
            "force_promote.html",
            title="Force a promotion past the gate",
            checks=[(m, selectors.promotion_check(m)) for m in queryset],
            reason=reason,
            error="a reason is required" if request.POST.get("confirm") else "",
        )

    def _each(self, request: HttpRequest, queryset: QuerySet, verb: str, call) -> None:
        for model in queryset:
            try:
                result = call(model)
            except (services.RegistryError, ArtifactError) as exc:
                self.message_user(request, f"{model}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"{verb}: {result}", messages.SUCCESS)

    @admin.action(description="Promote to active (asks for confirmation)", permissions=["change"])
    def promote(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        # The first post shows what would change; only the confirmation form's post promotes.
        if request.POST.get("confirm") == "promote":
            self._each(
                request,
                queryset,
                "promoted",
                lambda m: services.promote_model(model=m, promoted_by=request.user),
            )
            return None
        previews = [selectors.promotion_preview(m) for m in queryset.order_by("name", "version")]
        return self._confirm_page(
            request,
            "confirm_promote.html",
            title="Promote to active?",
            previews=previews,
            all_promotable=all(p.gate.promotable and p.status_ok for p in previews),
            any_refused=any(p.status_ok and not p.gate.promotable for p in previews),
        )

    @admin.action(
        description="Roll back to the previously active version (asks for confirmation)",
        permissions=["change"],
    )
    def rollback(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        names = sorted(set(queryset.values_list("name", flat=True)))
        if request.POST.get("confirm") != "rollback":
            previews = [selectors.rollback_preview(name) for name in names]
            return self._confirm_page(
                request,
                "confirm_rollback.html",
                title="Roll back?",
                previews=previews,
                any_possible=any(p.possible for p in previews),
                selected=list(queryset.values_list("pk", flat=True)),
            )
        for name in names:
            try:
                model = services.rollback_model(name=name, promoted_by=request.user)
            except (services.RegistryError, ArtifactError) as exc:
                self.message_user(request, f"{name}: {exc}", messages.ERROR)
            else:
                self.message_user(request, f"rolled back: {model} is active", messages.SUCCESS)
        return None

    @admin.action(description="Compare the selected versions side by side")
    def compare(self, request: HttpRequest, queryset: QuerySet) -> HttpResponse | None:
        ids = sorted(queryset.values_list("pk", flat=True))
        if len(ids) < 2:
            self.message_user(request, "select two or more versions to compare", messages.WARNING)
            return None
        url = reverse("admin:training_rlmodel_compare")
        return HttpResponseRedirect(f"{url}?{urlencode({'ids': ','.join(map(str, ids))})}")

    @admin.action(description="Retire", permissions=["change"])
    def retire(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "retired", lambda m: services.retire_model(model=m))

    @admin.action(description="Cancel training", permissions=["change"])
    def cancel(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._each(request, queryset, "cancelled", lambda m: services.cancel_training_run(model=m))

    def compare_view(self, request: HttpRequest) -> HttpResponse:
        """Two or more versions side by side: held-out metrics with intervals, the gate, the
        periods, and their held-out equity curves overlaid."""
        if not self.has_view_permission(request):
            return HttpResponse("Forbidden", status=403)
        raw = request.GET.get("ids", "")
        ids = [int(part) for part in raw.split(",") if part.strip().isdigit()][:10]
        reports = [
            selectors.model_report(m, with_learning_curve=False)
            for m in selectors.models_by_ids(ids)
        ]
        if len(reports) < 2:
            self.message_user(request, "select two or more versions to compare", messages.WARNING)
            return HttpResponseRedirect(reverse("admin:training_rlmodel_changelist"))
        periods = {r.held_out_period for r in reports}
        return self._confirm_page(
            request,
            "compare.html",
            title="Compare versions",
            reports=reports,
            rows=selectors.compare_rows(reports),
            same_period=len(periods) == 1,
            chart=charts.equity_drawdown_svg(
                {f"{r.model.name} v{r.model.version}": r.equity_curves for r in reports},
                title="held-out equity, overlaid",
            ),
        )

    def get_urls(self):  # type: ignore[no-untyped-def]
        custom = [
            path(
                "start/",
                self.admin_site.admin_view(self.start_view),
                name="training_rlmodel_start",
            ),
            path(
                "compare/",
                self.admin_site.admin_view(self.compare_view),
                name="training_rlmodel_compare",
            ),
            path(
                "<path:object_id>/run/",
                self.admin_site.admin_view(self.run_view),
                name="training_rlmodel_run",
            ),
            path(
                "<path:object_id>/run.json",
                self.admin_site.admin_view(self.run_json),
                name="training_rlmodel_run_json",
            ),
            path(
                "<path:object_id>/run/cancel/",
                self.admin_site.admin_view(self.run_cancel),
                name="training_rlmodel_run_cancel",
            ),
        ]
        return custom + super().get_urls()

    def _may_change(self, request: HttpRequest) -> bool:
        return self.has_view_permission(request) and request.user.has_perm(
            "training.change_rlmodel"
        )

    def start_view(self, request: HttpRequest) -> HttpResponse:
        """The form; a valid post queues the run (never runs it here) and opens its run page.

        Before queueing, the workers are pinged: when none answers, the form says so and
        queues only if asked to anyway (a run would otherwise sit at 0 %)."""
        if not self._may_change(request):
            return HttpResponse("Forbidden", status=403)
        worker = None
        if request.method == "POST":
            form = TrainingRunForm(request.POST)
            if form.is_valid():
                worker = dispatch.worker_status()
                if not worker.online and not form.cleaned_data.get("queue_anyway"):
                    form.add_error(None, f"Not queued: {worker.warning()}")
                else:
                    try:
                        model = services.start_training_run(spec=form.spec())
                    except SpecError as exc:
                        add_spec_errors(form, exc)
                    except services.RegistryError as exc:
                        form.add_error(None, str(exc))
                    else:
                        self.message_user(request, f"queued {model}", messages.SUCCESS)
                        return HttpResponseRedirect(
                            reverse("admin:training_rlmodel_run", args=[model.pk])
                        )
        else:
            chosen = parse_markets(request.GET.get("markets", ""))[:MAX_MARKETS]
            form = TrainingRunForm(initial=initial_values(chosen or selectors.recorded_markets()))
        worker = worker or dispatch.worker_status()
        context = {
            **self.admin_site.each_context(request),
            "title": "Start a training run",
            "form": form,
            "opts": self.model._meta,
            "worker": worker,
        }
        return TemplateResponse(request, "admin/training/rlmodel/start.html", context)

    def run_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A run's live page: status, progress, ETA, learning curve, log tail, cancel; its
        script polls :meth:`run_json` until the run ends."""
        model = self.get_object(request, object_id)
        if model is None or not self.has_view_permission(request, model):
            return HttpResponse("Not found", status=404)
        state = progress.run_state(model)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Run {model.name} v{model.version}",
            "opts": self.model._meta,
            "model": model,
            "state": state,
            "chart": self._learning_chart(model, state),
            "may_cancel": self._may_change(request) and not state["finished"],
            "worker": dispatch.worker_status() if state["phase"] == "queued" else None,
        }
        return TemplateResponse(request, "admin/training/rlmodel/run.html", context)

    @staticmethod
    def _learning_chart(model: RLModel, state: dict) -> str:
        return charts.learning_curve_svg(
            state["curve"], title=f"{model.name} v{model.version}: mean episode reward so far"
        )

    def run_json(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """The run page's state; the chart only when the curve has points the page lacks
        (``?points=`` is how many it has)."""
        model = self.get_object(request, object_id)
        if model is None or not self.has_view_permission(request, model):
            return JsonResponse({"error": "not found"}, status=404)
        state = progress.run_state(model)
        have = request.GET.get("points", "")
        if not have.isdigit() or int(have) != state["points"]:
            state["chart"] = self._learning_chart(model, state)
        return JsonResponse(state)

    def run_cancel(self, request: HttpRequest, object_id: str) -> HttpResponse:
        model = self.get_object(request, object_id)
        if model is None or not self._may_change(request):
            return HttpResponse("Forbidden", status=403)
        if request.method == "POST":
            try:
                services.cancel_training_run(model=model)
            except services.RegistryError as exc:
                self.message_user(request, str(exc), messages.WARNING)
            else:
                self.message_user(request, f"cancelled {model}", messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:training_rlmodel_run", args=[model.pk]))


@admin.register(TradingEpisode)
class TradingEpisodeAdmin(RecordPageMixin, EpisodeFormats, admin.ModelAdmin):
    list_display = (
        "__str__",
        "model",
        "mode",
        "started",
        "steps",
        "return_display",
        "sharpe_display",
        "drawdown_display",
        "win_rate_display",
        "fees_display",
    )
    list_filter = (("started_at", TimeRangeFilter), "mode", "model__name")
    list_select_related = ("model",)
    date_hierarchy = "started_at"
    fields = (
        "equity_plot",
        "model",
        "mode",
        "markets_display",
        "started",
        "ended",
        "steps",
        "return_display",
        "sharpe_display",
        "drawdown_display",
        "win_rate_display",
        "fees_display",
        "positions_display",
    )
    readonly_fields = fields

    @admin.display(description="markets")
    def markets_display(self, obj: TradingEpisode) -> str:
        return ", ".join(str(m) for m in obj.markets or [])

    @admin.display(description="ended")
    def ended(self, obj: TradingEpisode) -> str:
        return formatting.ms_time(obj.ended_at)

    @admin.display(description="final positions (contracts)")
    def positions_display(self, obj: TradingEpisode) -> str:
        positions = obj.final_positions if isinstance(obj.final_positions, dict) else {}
        parts = []
        for market, held in positions.items():
            if isinstance(held, dict):  # {"yes_e2": ..., "no_e2": ...} from the simulator
                sides = [
                    f"{formatting.contracts_e2(held.get(key))} {label}"
                    for key, label in (("yes_e2", "YES"), ("no_e2", "NO"))
                    if held.get(key)
                ]
                parts.append(f"{market}: {' + '.join(sides) or 'flat'}")
            else:
                parts.append(f"{market}: {held}")
        return "; ".join(parts) or "flat"

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
