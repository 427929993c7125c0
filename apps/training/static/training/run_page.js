// The admin's run page: poll the run's state every 2 s and place it until the run ends.
(function () {
  "use strict";
  const page = document.getElementById("run-page");
  if (!page) return;
  const url = page.dataset.stateUrl;
  let points = Number(page.dataset.points || 0);
  let finished = page.dataset.finished === "1";
  const byId = (id) => document.getElementById(id);
  const text = (id, value) => { const el = byId(id); if (el) el.textContent = value; };

  function place(state) {
    text("run-status", state.status_label);
    byId("run-status").className = "kf-status-" + state.status;
    byId("run-progress").value = state.fraction;
    byId("run-progress").textContent = state.percent;
    text("run-phase", state.phase_label);
    text("run-percent", state.percent);
    text("run-steps", state.steps);
    text("run-fps", state.fps);
    text("run-eta", state.eta);
    text("run-reward", state.mean_reward);
    text("run-updated", state.updated);
    const error = byId("run-error");
    error.textContent = state.error;
    error.hidden = !state.error;
    const log = byId("run-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = state.log.join("\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
    if (state.chart) {
      byId("run-curve").src = state.chart;
      points = state.points;
    }
    if (state.finished) {
      finished = true;
      byId("run-done").hidden = false;
      const cancel = byId("cancel-form");
      if (cancel) cancel.remove();
      const warning = byId("worker-warning");
      if (warning) warning.remove();
    }
    page.dataset.polls = String(Number(page.dataset.polls || 0) + 1);
  }

  async function poll() {
    try {
      const response = await fetch(url + "?points=" + points, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (response.ok) place(await response.json());
    } catch (error) {
      // The server restarting or a dropped connection: try again on the next tick.
    }
    if (!finished) window.setTimeout(poll, 2000);
  }

  if (!finished) window.setTimeout(poll, 2000);
})();
