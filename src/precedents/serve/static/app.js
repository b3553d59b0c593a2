// precedents serve: the little JavaScript the pages need (no build step, no dependencies).
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;

  async function post(url, body, method) {
    const resp = await fetch(url, {
      method: method || "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => ({error: resp.statusText}));
    if (!resp.ok) throw new Error(data.error || resp.statusText);
    return data;
  }

  // Probability bars (CSP forbids inline styles; widths are set from data-w).
  document.querySelectorAll(".bar[data-w]").forEach((bar) => {
    bar.firstElementChild.style.width = Math.max(0, Math.min(100, parseFloat(bar.dataset.w))) + "%";
  });

  // Review queue: mouse and keyboard decisions, each acknowledged by the server after its commit.
  const queue = document.getElementById("queue");
  if (queue) {
    const method = queue.dataset.method;
    const nClasses = parseInt(queue.dataset.classes, 10);
    const names = Array.from(queue.querySelector("select[data-action=relabel]").options).slice(1).map((o) => o.text);
    const rows = Array.from(queue.querySelectorAll("tr.item"));
    let current = 0;

    function focusRow(i) {
      if (!rows.length) return;
      current = Math.max(0, Math.min(rows.length - 1, i));
      rows.forEach((r) => r.classList.remove("current"));
      rows[current].classList.add("current");
      rows[current].focus({preventScroll: false});
    }
    function setCounts(counts) {
      for (const [k, v] of Object.entries(counts)) {
        const el = document.querySelector(`[data-count="${k}"]`);
        if (el) el.textContent = v;
      }
    }
    async function decide(row, action, label) {
      const cell = row.querySelector("td.decision");
      row.className = row.className.replace(/\b(saved-\w+|pending)\b/g, "").trim() + " pending";
      cell.textContent = "saving…";
      try {
        let data;
        if (action === "undo") {
          data = await post(`/api/decisions/${row.dataset.train}`, undefined, "DELETE");
          cell.textContent = "";
        } else {
          data = await post("/api/decisions", {train_index: parseInt(row.dataset.train, 10), action: action,
                                               label: label === undefined ? null : label, method: method});
          cell.textContent = action + (action === "relabel" ? " → " + names[label] : "");
          row.classList.add("saved-" + action);
        }
        row.classList.remove("pending");
        row.dataset.saved = action;
        setCounts(data.counts);
      } catch (err) {
        row.classList.remove("pending");
        cell.innerHTML = "";
        const span = document.createElement("span");
        span.className = "error";
        span.textContent = "not saved: " + err.message;
        cell.appendChild(span);
      }
    }
    rows.forEach((row, i) => {
      row.addEventListener("click", (ev) => {
        if (ev.target.closest("a")) return;
        focusRow(i);
      });
      row.querySelectorAll("button[data-action]").forEach((btn) =>
        btn.addEventListener("click", () => { focusRow(i); decide(row, btn.dataset.action); }));
      const sel = row.querySelector("select[data-action=relabel]");
      sel.addEventListener("change", () => {
        if (sel.value !== "") { focusRow(i); decide(row, "relabel", parseInt(sel.value, 10)); sel.value = ""; }
      });
    });
    document.addEventListener("keydown", async (ev) => {
      if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
      if (ev.target.matches("input, select, textarea")) return;
      const row = rows[current];
      if (!row) return;
      const key = ev.key;
      if (key === "j" || key === "ArrowDown") { focusRow(current + 1); ev.preventDefault(); return; }
      if (key === "k" || key === "ArrowUp") { focusRow(current - 1); ev.preventDefault(); return; }
      let done = null;
      if (key === "c") done = decide(row, "correct");
      else if (key === "x" || key === "Delete") done = decide(row, "remove");
      else if (key === "u") done = decide(row, "undo");
      else if (/^[0-9]$/.test(key) && parseInt(key, 10) < nClasses) done = decide(row, "relabel", parseInt(key, 10));
      if (done) { ev.preventDefault(); focusRow(current + 1); await done; }
    });
    focusRow(0);

    const apply = document.getElementById("apply");
    const out = document.getElementById("apply-result");
    apply.addEventListener("click", async () => {
      out.hidden = false;
      out.textContent = "refitting the head on the frozen features…";
      try {
        const r = await post("/api/apply", {});
        const pct = (v) => (v === null ? "–" : (100 * v).toFixed(2) + "%");
        out.innerHTML = "";
        const h = document.createElement("h3");
        h.textContent = "Applied: " + r.n_relabelled + " relabelled, " + r.n_removed + " removed";
        const p = document.createElement("p");
        p.id = "apply-accuracy";
        p.textContent = "test accuracy of the refit head: " + pct(r.accuracy_before) + " → " + pct(r.accuracy_after) +
          " (given model: " + pct(r.model_accuracy) + "); " + r.changed.length + " test predictions changed" +
          (r.converged ? "." : " (the refit did not fully converge).");
        out.append(h, p);
        if (r.changed.length) {
          const list = document.createElement("p");
          r.changed.slice(0, 60).forEach((c) => {
            const a = document.createElement("a");
            a.href = "/test/" + c.test_index;
            a.textContent = "#" + c.test_index + " (" + names[c.before] + "→" + names[c.after] +
              (c.label >= 0 ? ", true " + names[c.label] : "") + ")";
            list.append(a, " ");
          });
          if (r.changed.length > 60) list.append("… and " + (r.changed.length - 60) + " more");
          out.append(list);
        }
      } catch (err) {
        out.textContent = "apply failed: " + err.message;
      }
    });
  }
})();
