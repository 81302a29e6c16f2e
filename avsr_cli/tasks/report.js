"use strict";
// The "Every clip" table: rows from the JSON in #clip-data, sorted by a clicked column, filtered by
// condition and clip id; a click on a row shows its alignment and a player. Plain DOM, no library.
(function () {
  const source = document.getElementById("clip-data");
  const table = document.getElementById("clip-table");
  if (!source || !table) return;
  const data = JSON.parse(source.textContent);
  const body = table.tBodies[0];
  const filter = document.getElementById("clip-filter");
  const search = document.getElementById("clip-search");
  const count = document.getElementById("clip-count");
  // a row: [condition, clip, wer (null: failed; "inf"), S, D, I, words, hyp, ops, error]
  const rows = data.rows.map((r, n) => ({
    n: n, condition: r[0], clip: data.clips[r[1]], id: data.clips[r[1]][0],
    wer: r[2] === null ? null : r[2] === "inf" ? Infinity : r[2],
    S: r[3], D: r[4], I: r[5], words: r[6], hyp: r[7], ops: r[8], error: r[9],
  }));
  const state = { key: null, dir: 1 };

  function value(row, key) {
    if (key === "condition") return row.condition;
    if (key === "id" || key === "hyp") return row[key] || "";
    return row[key];
  }

  function compare(a, b) {
    const x = value(a, state.key), y = value(b, state.key);
    if (x === y) return a.n - b.n;
    if (x === null) return 1;  // failed clips last, whichever the direction
    if (y === null) return -1;
    return (x < y ? -1 : 1) * state.dir;
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function alignment(row) {
    const box = document.createElement("div");
    box.className = "align";
    const refs = row.clip[1].split(" ").filter(Boolean), hyps = row.hyp.split(" ").filter(Boolean);
    const column = (op, r, h) => {
      const w = document.createElement("span");
      w.className = "w " + op;
      for (const t of [r, h]) {
        const s = document.createElement("span");
        s.textContent = t || "\u00a0";
        w.appendChild(s);
      }
      if (op !== "C" && op !== "lab") {
        const mark = document.createElement("i");
        mark.textContent = op;
        w.appendChild(mark);
      }
      box.appendChild(w);
    };
    column("lab", "REF", "HYP");
    let i = 0, j = 0;
    for (const op of row.ops) {
      const r = "CSD".includes(op) ? refs[i++] : "";
      const h = "CSI".includes(op) ? hyps[j++] : "";
      column(op, r, h);
    }
    return box;
  }

  function toggle(tr, row) {
    const next = tr.nextSibling;
    if (next && next.classList.contains("detail")) { next.remove(); return; }
    const detail = document.createElement("tr");
    detail.className = "detail";
    const td = document.createElement("td");
    td.colSpan = 8;
    if (row.error) td.appendChild(document.createTextNode(row.error));
    else td.appendChild(alignment(row));
    if (row.clip[2]) {
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.preload = "none";
      audio.src = row.clip[2];
      td.appendChild(audio);
    }
    detail.appendChild(td);
    tr.after(detail);
  }

  function render() {
    const wanted = filter.value === "" ? null : Number(filter.value);
    const text = search.value.trim().toLowerCase();
    let shown = rows.filter(r => (wanted === null || r.condition === wanted) && (!text || r.id.toLowerCase().includes(text)));
    if (state.key) shown = shown.slice().sort(compare);
    const frag = document.createDocumentFragment();
    for (const row of shown) {
      const tr = document.createElement("tr");
      tr.className = "row";
      tr.dataset.wer = row.wer === null ? "" : String(row.wer);
      tr.appendChild(cell(data.conditions[row.condition]));
      tr.appendChild(cell(row.id));
      if (row.wer === null) {
        tr.appendChild(cell("failed", "num error"));
        for (let k = 0; k < 4; k++) tr.appendChild(cell("", "num"));
        tr.appendChild(cell(row.error || "", "error"));
      } else {
        tr.appendChild(cell(row.wer === Infinity ? "∞" : row.wer.toFixed(2), "num"));
        for (const k of ["S", "D", "I", "words"]) tr.appendChild(cell(String(row[k]), "num"));
        tr.appendChild(cell(row.hyp));
      }
      tr.addEventListener("click", () => toggle(tr, row));
      frag.appendChild(tr);
    }
    body.replaceChildren(frag);
    count.textContent = shown.length + " of " + rows.length + " results";
  }

  for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", () => {
      const key = th.dataset.key;
      state.dir = state.key === key ? -state.dir : 1;
      state.key = key;
      for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", state.dir === 1 ? "ascending" : "descending");
      render();
    });
  }
  filter.addEventListener("change", render);
  search.addEventListener("input", render);
  render();
})();
