// The live page: one WebSocket (apps/dashboard/consumers.py) pushes {"type": "book"} as the
// recorder publishes and {"type": "summary"} every few seconds. Plain DOM, no dependencies.
// Every value from the server is written with textContent (tickers come from the exchange).
"use strict";

(function () {
  const root = document.getElementById("live");
  const wsPath = root.dataset.wsPath;
  const plotUrlTemplate = root.dataset.plotUrl; // .../episodes/0/plot.png
  const badge = document.getElementById("connection");
  const books = new Map(); // ticker -> {book, recording, updatedAt}
  let recording = new Map(); // ticker -> bool
  let plotEpisode = null;
  let plotLoadedAt = 0;
  let retryMs = 1000;

  const dollars = (e4) => (e4 === null || e4 === undefined ? "—" : "$" + (e4 / 10000).toFixed(4));
  const contracts = (e2) => (e2 === null || e2 === undefined ? "—" : (e2 / 100).toFixed(2));
  const number = (v) => (v === null || v === undefined ? "—" : String(v));
  const ratio = (v) => (v === null || v === undefined ? "—" : (v * 100).toFixed(3) + " %");

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fillTable(tableId, rows, emptyId) {
    const body = document.querySelector("#" + tableId + " tbody");
    body.replaceChildren(...rows);
    if (emptyId) document.getElementById(emptyId).hidden = rows.length > 0;
  }

  function setConnected(on, text) {
    badge.className = "badge " + (on ? "on" : "off");
    badge.dataset.state = on ? "open" : "closed";
    badge.textContent = text;
  }

  // -- books ----------------------------------------------------------------------------------

  function bookRow(ticker, entry, flash) {
    const b = entry.book;
    const tr = document.createElement("tr");
    tr.dataset.market = ticker;
    if (flash) tr.className = "flash";
    cell(tr, ticker);
    cell(tr, recording.get(ticker) ? "yes" : "no");
    cell(tr, b.trusted ? "yes" : "no (" + (b.untrusted_reason || "gap") + ")");
    cell(tr, dollars(b.yes_bid_e4), "num yes").dataset.field = "yes_bid";
    cell(tr, contracts(b.yes_bid_size_e2), "num");
    cell(tr, dollars(b.yes_ask_e4), "num no").dataset.field = "yes_ask";
    cell(tr, contracts(b.yes_ask_size_e2), "num");
    cell(tr, dollars(b.spread_e4), "num");
    cell(tr, new Date(entry.updatedAt).toLocaleTimeString(), "num");
    return tr;
  }

  function renderBooks(flashTicker) {
    const tickers = Array.from(new Set([...books.keys(), ...recording.keys()])).sort();
    const rows = tickers
      .filter((t) => books.has(t))
      .map((t) => bookRow(t, books.get(t), t === flashTicker));
    fillTable("books", rows, "books-empty");
  }

  function onBook(book) {
    books.set(book.market_ticker, { book: book, updatedAt: Date.now() });
    renderBooks(book.market_ticker);
  }

  // -- summary --------------------------------------------------------------------------------

  function renderIngest(workers) {
    const rows = workers.map((w) => {
      const c = (w.counters && w.counters.client) || {};
      const wr = (w.counters && w.counters.writer) || {};
      const tr = document.createElement("tr");
      cell(tr, w.name);
      cell(tr, w.healthy ? "yes" : "no: " + w.problems.join("; "), w.healthy ? "yes" : "no");
      cell(tr, w.heartbeat_age_s.toFixed(1) + " s ago", "num");
      for (const v of [c.messages, c.deltas, c.gaps, c.resyncs, c.reconnects]) {
        cell(tr, number(v), "num");
      }
      for (const v of [wr.rows_written, wr.queue_depth, wr.spilled_rows]) cell(tr, number(v), "num");
      return tr;
    });
    fillTable("ingest", rows, "ingest-empty");
  }

  function facts(dl, pairs) {
    dl.replaceChildren();
    for (const [label, value] of pairs) {
      const dt = document.createElement("dt");
      dt.textContent = label;
      const dd = document.createElement("dd");
      dd.textContent = value;
      dl.append(dt, dd);
    }
  }

  const usd = (v) => (typeof v === "number" ? "$" + v.toFixed(2) : "—");

  // The paper trader's own heartbeat (apps/trading/services.py): the figures a person looks
  // for first, then any other counter it reports, as it reports it.
  function traderFacts(w) {
    const c = Object.assign({}, w.counters || {});
    const pairs = [
      ["trader", w.name],
      ["healthy", w.healthy ? "yes" : "no: " + w.problems.join("; ")],
      ["heartbeat", w.heartbeat_age_s.toFixed(1) + " s ago"],
    ];
    const take = (key) => {
      const value = c[key];
      delete c[key];
      return value;
    };
    const model = take("model");
    if (model && typeof model === "object") {
      pairs.push(["model", model.name + " v" + model.version + " (" + model.algorithm + ")"]);
    } else if (model !== undefined) {
      pairs.push(["model", String(model)]);
    }
    if ("pnl_dollars" in c) pairs.push(["P&L", usd(take("pnl_dollars"))]);
    if ("equity_dollars" in c) pairs.push(["equity", usd(take("equity_dollars"))]);
    if ("fees_dollars" in c) pairs.push(["fees", usd(take("fees_dollars"))]);
    if ("decisions" in c) pairs.push(["decisions", String(take("decisions"))]);
    if ("last_decision_at" in c) {
      const at = take("last_decision_at");
      pairs.push(["last decision", at ? new Date(at).toLocaleTimeString() : "—"]);
    }
    const positions = take("positions");
    if (positions && typeof positions === "object") {
      const text = Object.entries(positions).map(([m, p]) => m + " " + p).join(", ");
      pairs.push(["positions (contracts)", text || "none"]);
    }
    const kill = take("kill_switch");
    if (kill && typeof kill === "object") {
      pairs.push(["kill switch", kill.engaged ? "ENGAGED: " + kill.reason : "armed"]);
    } else if (kill !== undefined) {
      pairs.push(["kill switch", String(kill)]);
    }
    for (const [key, value] of Object.entries(c)) {
      pairs.push([key, typeof value === "object" ? JSON.stringify(value) : String(value)]);
    }
    return pairs;
  }

  function renderPaper(paper) {
    const workerBox = document.getElementById("paper-workers");
    workerBox.replaceChildren();
    for (const w of paper.workers) {
      const dl = document.createElement("dl");
      dl.className = "facts";
      facts(dl, traderFacts(w));
      workerBox.appendChild(dl);
    }
    const ep = paper.episode;
    document.getElementById("paper-empty").hidden = Boolean(ep) || paper.workers.length > 0;
    if (!ep) {
      facts(document.getElementById("paper-episode"), []);
      fillTable("positions", []);
      fillTable("decisions", []);
      return;
    }
    facts(document.getElementById("paper-episode"), [
      ["episode", "#" + ep.id + " of " + ep.model + (ep.ended_at ? " (ended)" : " (running)")],
      ["decisions", String(ep.decisions)],
      ["return (sum of rewards)", ratio(ep.return_from_rewards)],
      ["cash", dollars(ep.cash_after_e4)],
      ["fees paid", dollars(ep.fees_paid_e4)],
    ]);
    fillTable(
      "positions",
      Object.entries(ep.positions_e2).map(([ticker, pos]) => {
        const tr = document.createElement("tr");
        cell(tr, ticker);
        cell(tr, contracts(pos), "num " + (pos > 0 ? "yes" : pos < 0 ? "no" : ""));
        return tr;
      })
    );
    fillTable(
      "decisions",
      ep.last_decisions.map((d) => {
        const tr = document.createElement("tr");
        cell(tr, String(d.step), "num");
        cell(tr, new Date(d.time).toLocaleTimeString(), "num");
        cell(tr, d.market_ticker);
        cell(tr, d.action_type);
        cell(tr, String(d.action_size), "num");
        cell(tr, dollars(d.price_e4), "num");
        cell(tr, contracts(d.quantity_filled_e2), "num");
        cell(tr, dollars(d.fee_e4), "num");
        cell(tr, contracts(d.position_after_e2), "num");
        cell(tr, d.reward === null ? "—" : d.reward.toFixed(6), "num");
        cell(tr, String(d.model_version), "num");
        return tr;
      })
    );
  }

  function renderPlot(episodeId) {
    const img = document.getElementById("plot");
    const caption = document.getElementById("plot-caption");
    if (episodeId === null || episodeId === undefined) {
      img.hidden = true;
      caption.textContent = "No episode yet.";
      return;
    }
    // A new episode at once; the same one again every 15 s (its curve grows while it runs).
    const stale = Date.now() - plotLoadedAt > 15000;
    if (episodeId !== plotEpisode || stale) {
      plotEpisode = episodeId;
      plotLoadedAt = Date.now();
      img.src = plotUrlTemplate.replace("/0/", "/" + episodeId + "/") + "?t=" + plotLoadedAt;
      img.hidden = false;
      caption.textContent = "Episode #" + episodeId;
    }
  }

  function onSummary(summary) {
    recording = new Map(summary.markets.map((m) => [m.market_ticker, m.recording]));
    renderBooks(null);
    renderIngest(summary.ingest);
    renderPaper(summary.paper);
    renderPlot(summary.plot_episode_id);
  }

  // -- the socket -----------------------------------------------------------------------------

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + wsPath);
    socket.onopen = () => {
      retryMs = 1000;
      setConnected(true, "live");
    };
    socket.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (message.type === "book") onBook(message.book);
      else if (message.type === "summary") onSummary(message);
    };
    socket.onclose = () => {
      setConnected(false, "disconnected, retrying…");
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, 30000);
    };
  }

  connect();
})();
