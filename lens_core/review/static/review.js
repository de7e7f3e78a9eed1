// LENS review page: one card per mined box; keyboard-first verdicts kept in localStorage and exported
// as JSON (lens review-import). No network, no server: everything it needs is in this file, data/ and img/.
// The cards' records come in chunks (data/cards-NNNNN.js, page.chunk_size cards each), loaded one at a time
// as the reviewer reaches them, so the first view stays small however many boxes were mined.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("lens-data").textContent);
  const PAGE = DATA.page, INDEX = DATA.index, TOTAL = PAGE.cards;
  const loaded = {};  // chunk -> its cards
  let chunk = 0, CARDS = [];  // the chunk on screen
  const KEY = "lens-review:" + DATA.page.id;
  const MAIN = 320;  // px: the box's slice as shown
  const $ = (id) => document.getElementById(id);
  let state = { verdicts: {}, reviewer: "" };
  let view = [];     // indices into CARDS that pass the filters
  let pos = 0;       // position in view
  let fixing = false, drag = null;

  // ------------------------------------------------------------------------------- storage
  function load() {
    try {
      const s = JSON.parse(localStorage.getItem(KEY) || "null");
      if (s && typeof s === "object") state = { verdicts: s.verdicts || {}, reviewer: s.reviewer || "" };
    } catch (e) { /* no storage (some file:// setups): verdicts live until the page closes; export often */ }
  }
  function save() {
    try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (e) { toast("not saved in the browser: export now"); }
  }

  // ------------------------------------------------------------------------------- chunks
  // a data file calls this as it loads (a <script> works from file://, where fetch() is refused)
  window.lensReviewChunk = (k, cards) => { loaded[k] = cards; };
  function loadChunk(k, then) {
    if (loaded[k]) { then(); return; }
    const s = document.createElement("script");
    s.src = "data/cards-" + String(k).padStart(5, "0") + ".js";
    s.onload = () => { s.remove(); if (loaded[k]) then(); else toast(s.src + " holds no cards"); };
    s.onerror = () => { s.remove(); toast("cannot load " + s.src + ": keep data/ beside index.html"); };
    document.head.appendChild(s);
  }
  function loadAll(then, k) {  // every chunk, one after another (export)
    k = k || 0;
    if (k >= INDEX.length) { then(); return; }
    loadChunk(k, () => loadAll(then, k + 1));
  }
  // whether chunk k may hold a card passing the filters (its summary; "undecided only" needs its cards)
  function mayMatch(k) {
    const s = $("f-strategy").value, d = $("f-dataset").value, lo = parseFloat($("f-score").value), x = INDEX[k];
    if (s && !x.strategy[s]) return false;
    if (d && !x.dataset[d]) return false;
    return isNaN(lo) || (x.max_score !== null && x.max_score >= lo);
  }
  function nextChunk(from, step) {
    for (let k = from + step; k >= 0 && k < INDEX.length; k += step) if (mayMatch(k)) return k;
    return -1;
  }
  // show chunk k at its first card (at 0), its last (-1), or the card with view index `at`
  function showChunk(k, at, then) {
    loadChunk(k, () => {
      chunk = k; CARDS = loaded[k];
      applyFilters(null);
      if (at === -1) pos = Math.max(view.length - 1, 0); else if (at) pos = Math.min(at, Math.max(view.length - 1, 0));
      fixing = false; render();
      if (then) then();
    });
  }
  // the first chunk from `from` (step +1 or -1) with a card passing the filters, or none (-1)
  function seek(from, step, at) {
    const k = mayMatch(from) ? from : nextChunk(from, step);
    if (k < 0) { showChunk(chunk, at); return; }  // no chunk can match: this one, "no card matches"
    showChunk(k, at, () => { const n = nextChunk(k, step); if (!view.length && n >= 0) seek(n, step, at); });
  }

  // ------------------------------------------------------------------------------- filters
  function score(c) { return c.score === null ? -1 : c.score; }
  function applyFilters(keepCard) {
    const s = $("f-strategy").value, d = $("f-dataset").value;
    const lo = parseFloat($("f-score").value), undecided = $("f-undecided").checked;
    const cur = keepCard === undefined ? view[pos] : keepCard === null ? -2 : keepCard;
    view = [];
    CARDS.forEach((c, i) => {
      if (s && c.strategy !== s) return;
      if (d && c.dataset !== d) return;
      if (!isNaN(lo) && score(c) < lo) return;
      if (undecided && state.verdicts[c.id] && i !== cur) return;
      view.push(i);
    });
    // the card on screen stays; after a verdict under "undecided only" the next one takes its place;
    // otherwise a card that left the view gives way to the first one
    const at = view.indexOf(cur);
    pos = at >= 0 ? at : keepCard === -1 ? Math.min(pos, Math.max(view.length - 1, 0)) : 0;
    if (keepCard !== null) render();
  }
  // filters changed: the card on screen stays if it passes; else the chunk's first match, else the first
  // chunk holding one
  function refilter() { applyFilters(); if (!view.length) seek(0, 1, 0); }
  function options(sel, values) {
    values.forEach((v) => { const o = document.createElement("option"); o.value = v; o.textContent = v; sel.appendChild(o); });
  }

  // ------------------------------------------------------------------------------- drawing
  function boxDiv(box, crop, size, cls) {
    const k = size / crop[2], el = document.createElement("div");
    el.className = "b " + (cls || "");
    el.style.left = (box[0] - crop[0]) * k + "px"; el.style.top = (box[1] - crop[1]) * k + "px";
    el.style.width = (box[2] - box[0]) * k + "px"; el.style.height = (box[3] - box[1]) * k + "px";
    return el;
  }
  function viewEl(src, size, crop, boxes) {
    const v = document.createElement("div");
    v.className = "view"; v.style.width = size + "px"; v.style.height = size + "px";
    const img = document.createElement("img"); img.src = src; img.alt = ""; v.appendChild(img);
    boxes.forEach(([b, cls]) => v.appendChild(boxDiv(b, crop, size, cls)));
    return v;
  }
  function caption(lines) {  // names from the data (volume, lesion ids, types) are text, never markup
    const fc = document.createElement("figcaption");
    lines.forEach((line, k) => {
      if (k) fc.appendChild(document.createElement("br"));
      fc.appendChild(document.createTextNode(line));
    });
    return fc;
  }
  function fmt(x, n) { return x === null || x === undefined ? "–" : Number(x).toFixed(n === undefined ? 3 : n); }

  function render() {
    const card = $("card");
    renderProgress(); renderList();
    if (!view.length) { card.innerHTML = '<p id="empty">No card matches the filters.</p>'; return; }
    const i = view[pos], c = CARDS[i], v = state.verdicts[c.id];
    card.innerHTML = "";
    const row = document.createElement("div"); row.className = "row";
    // the box on its slice: annotations (green), the mined box (orange), a fixed box (blue)
    const fig = document.createElement("figure");
    const boxes = (c.annotations[String(c.z)] || []).map((b) => [b, "gt"]);
    if (v && v.decision === "fix") { boxes.push([c.box, "old"]); boxes.push([v.box, "fixed"]); }
    else boxes.push([c.box, ""]);
    const main = viewEl(c.img, MAIN, c.crop, boxes);
    main.id = "main"; if (fixing) main.classList.add("fixing");
    main.addEventListener("mousedown", startDrag);
    fig.appendChild(main);
    fig.appendChild(caption([`card ${chunk * PAGE.chunk_size + i + 1} of ${TOTAL} · ${c.volume_id} · slice ${c.z}`]));
    row.appendChild(fig);
    // where the box came from
    if (c.source) {
      const s = c.source, sf = document.createElement("figure");
      sf.appendChild(viewEl(s.img, 224, s.crop, [[s.box, "gt"]]));
      const what = c.strategy === "cross_slice" ? "key-slice annotation it was propagated from"
        : "annotated lesion it was matched to";
      sf.appendChild(caption([what, `${s.volume_id} (study ${s.study_id}, series ${s.series_id}) · slice ${s.z}`,
        `${s.lesion_type} · ${s.lesion_id}`]));
      sf.id = "source"; row.appendChild(sf);
    }
    // the numbers
    const rows = [["strategy", c.strategy], ["found by", c.source_rule], ["dataset", c.dataset],
      ["patient", c.patient_id], ["lesion type", c.lesion_type || "–"], ["fused score", fmt(c.score)]];
    Object.keys(c.experts).sort().forEach((e) => rows.push(["expert " + e, fmt(c.experts[e])]));
    if (c.key_iou !== null) rows.push(["key-slice IoU", fmt(c.key_iou)]);
    if (c.embedding_distance !== null) rows.push(["embedding distance", fmt(c.embedding_distance)]);
    rows.push(["box (x1 y1 x2 y2)", c.box.map((x) => fmt(x, 1)).join(" ")]);
    if (v && v.decision === "fix") rows.push(["fixed box", v.box.map((x) => fmt(x, 1)).join(" ")]);
    const t = document.createElement("table"); t.className = "meta";
    rows.forEach(([k, val]) => { const r = t.insertRow(); r.insertCell().textContent = k; r.insertCell().textContent = val; });
    const dr = t.insertRow(); dr.insertCell().textContent = "verdict";
    const badge = document.createElement("span");
    badge.id = "decision"; badge.className = "decision" + (v ? " " + v.decision : "");
    badge.textContent = v ? v.decision : "undecided";
    dr.insertCell().appendChild(badge);
    row.appendChild(t);
    card.appendChild(row);
    // neighbouring slices: the same crop, the tracklet's boxes (yellow) and annotations (green)
    const strip = document.createElement("div"); strip.id = "strip";
    c.strip_z.forEach((z, k) => {
      const cell = document.createElement("div");
      if (z === c.z) cell.className = "centre";
      const bs = [];
      if (z !== null) {
        (c.annotations[String(z)] || []).forEach((b) => bs.push([b, "gt"]));
        (c.tracklet[String(z)] || []).forEach((b) => bs.push([b, "trk"]));
        if (z === c.z) bs.push([c.box, ""]);
      }
      const v2 = viewEl(c.strip, 120, c.crop, bs);
      const img = v2.querySelector("img");  // one PNG holds every slice: show slice k of it
      img.style.width = 120 * c.strip_z.length + "px"; img.style.maxWidth = "none";
      img.style.marginLeft = -120 * k + "px";
      cell.appendChild(v2);
      const lab = document.createElement("div"); lab.className = "lab";
      lab.textContent = z === null ? "outside" : "slice " + z;
      cell.appendChild(lab);
      strip.appendChild(cell);
    });
    card.appendChild(strip);
  }
  function renderProgress() {
    // the verdicts are this page's own (stored under its id): counted without loading every chunk
    const n = TOTAL, counts = { accept: 0, reject: 0, fix: 0 };
    Object.values(state.verdicts).forEach((v) => { if (v && counts[v.decision] !== undefined) counts[v.decision]++; });
    const done = counts.accept + counts.reject + counts.fix;
    $("progress").innerHTML = `<b id="n-done">${done}</b> / ${n} decided · ${counts.accept} accepted · ` +
      `${counts.reject} rejected · ${counts.fix} fixed<span class="bar"><i style="width:${n ? 100 * done / n : 0}%"></i></span>`;
    const part = INDEX.length > 1 ? ` · part ${chunk + 1} of ${INDEX.length} ([ ])` : "";
    $("showing").textContent = (view.length ? `card ${pos + 1} of ${view.length} shown` : "0 shown") + part;
  }
  function renderList() {
    const list = $("list"); list.innerHTML = "";
    view.forEach((i, k) => {
      const s = document.createElement("span"), v = state.verdicts[CARDS[i].id];
      s.className = (v ? v.decision : "") + (k === pos ? " cur" : "");
      s.title = `${CARDS[i].strategy} ${CARDS[i].volume_id} z${CARDS[i].z}`;
      s.addEventListener("click", () => { pos = k; fixing = false; render(); });
      list.appendChild(s);
    });
  }

  // ------------------------------------------------------------------------------- verdicts
  function decide(decision, box) {
    if (!view.length) return;
    const c = CARDS[view[pos]];
    state.verdicts[c.id] = { decision: decision, box: box || null, reviewer: $("reviewer").value.trim(),
                             time: new Date().toISOString() };
    save(); fixing = false;
    if ($("f-undecided").checked) { applyFilters(-1); if (!view.length && nextChunk(chunk, 1) >= 0) seek(nextChunk(chunk, 1), 1, 0); }
    else if (pos + 1 < view.length) { pos += 1; render(); }
    else if (nextChunk(chunk, 1) >= 0) showChunk(nextChunk(chunk, 1), 0);
    else render();
  }
  function clearVerdict() {
    if (!view.length) return;
    delete state.verdicts[CARDS[view[pos]].id]; save(); render();
  }
  // the next / previous card; past either end of this chunk, into the next / previous chunk with a match
  function move(step) {
    const to = pos + step;
    if (view.length && to >= 0 && to < view.length) { pos = to; fixing = false; render(); return; }
    const k = nextChunk(chunk, step);
    if (k >= 0) showChunk(k, step > 0 ? 0 : -1);
  }
  function nextUndecided() {
    const at = view.findIndex((i, p) => p > pos && !state.verdicts[CARDS[i].id]);
    if (at >= 0) { pos = at; render(); return; }
    const k = nextChunk(chunk, 1);
    if (k < 0) { toast("no undecided card after this one"); return; }
    showChunk(k, 0, () => { if (view.length && state.verdicts[CARDS[view[0]].id]) nextUndecided(); });
  }

  // "lesion but wrong box": f, then drag the box on the main image
  function toVolume(ev, c) {
    const r = $("main").getBoundingClientRect(), k = c.crop[2] / MAIN;
    const x = c.crop[0] + (ev.clientX - r.left) * k, y = c.crop[1] + (ev.clientY - r.top) * k;
    return [Math.max(0, Math.min(c.width, x)), Math.max(0, Math.min(c.height, y))];
  }
  function startDrag(ev) {
    if (!fixing || ev.button !== 0) return;
    ev.preventDefault();
    const c = CARDS[view[pos]];
    drag = { c: c, a: toVolume(ev, c), el: null };
  }
  function dragBox(ev) {
    const p = toVolume(ev, drag.c), a = drag.a;
    return [Math.min(a[0], p[0]), Math.min(a[1], p[1]), Math.max(a[0], p[0]), Math.max(a[1], p[1])]
      .map((x) => Math.round(x * 100) / 100);
  }
  document.addEventListener("mousemove", (ev) => {
    if (!drag) return;
    if (drag.el) drag.el.remove();
    drag.el = boxDiv(dragBox(ev), drag.c.crop, MAIN, "draft");
    $("main").appendChild(drag.el);
  });
  document.addEventListener("mouseup", (ev) => {
    if (!drag) return;
    const b = dragBox(ev); drag = null;
    if (b[2] - b[0] >= 1 && b[3] - b[1] >= 1) decide("fix", b);
    else { toast("box too small: drag again"); render(); }
  });

  // ------------------------------------------------------------------------------- export
  function exportVerdicts() { loadAll(writeExport); }  // every card's row: the chunks not yet seen load first
  function writeExport() {
    const rows = INDEX.flatMap((x, k) => loaded[k]).map((c) => {
      const v = state.verdicts[c.id];
      return { box_id: c.id, decision: v ? v.decision : null, box: v ? v.box : null,
               reviewer: v ? v.reviewer : null, time: v ? v.time : null };
    });
    const doc = { format: "lens-review-verdicts", version: 1, page: DATA.page, exported: new Date().toISOString(),
                  verdicts: rows };
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" }));
    a.download = "verdicts_" + DATA.page.experiment + ".json";
    document.body.appendChild(a); a.click(); a.remove();
    toast("verdicts exported: lens review-import " + a.download + " --out …/mining/review.parquet");
  }
  function toast(msg) { const t = $("toast"); t.textContent = msg; t.classList.add("on"); setTimeout(() => t.classList.remove("on"), 2500); }

  // ------------------------------------------------------------------------------- keys
  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "select" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "a") decide("accept");
    else if (k === "r") decide("reject");
    else if (k === "f") { fixing = !fixing; render(); if (fixing) toast("drag the lesion's box on the image (Esc: cancel)"); }
    else if (k === "Escape") { fixing = false; drag = null; render(); }
    else if (k === "u") clearVerdict();
    else if (k === "j" || k === "ArrowRight" || k === "ArrowDown") move(1);
    else if (k === "k" || k === "ArrowLeft" || k === "ArrowUp") move(-1);
    else if (k === "n") nextUndecided();
    else if (k === "]") { const n = nextChunk(chunk, 1); if (n >= 0) showChunk(n, 0); }
    else if (k === "[") { const n = nextChunk(chunk, -1); if (n >= 0) showChunk(n, 0); }
    else if (k === "e") exportVerdicts();
    else return;
    ev.preventDefault();
  });

  // ------------------------------------------------------------------------------- start
  load();
  $("reviewer").value = state.reviewer;
  $("reviewer").addEventListener("change", () => { state.reviewer = $("reviewer").value.trim(); save(); });
  // Enter (or Escape) ends the name: the field lets go of the keyboard, so the next "a" judges the card
  // instead of being typed into the name (and stamped on every later verdict)
  $("reviewer").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" || ev.key === "Escape") { ev.preventDefault(); $("reviewer").blur(); }
  });
  const seen = (what) => [...new Set(INDEX.flatMap((x) => Object.keys(x[what])))];
  options($("f-strategy"), seen("strategy"));
  options($("f-dataset"), seen("dataset").sort());
  ["f-strategy", "f-dataset", "f-score"].forEach((id) => $(id).addEventListener("change", () => { refilter(); $(id).blur(); }));
  $("f-undecided").addEventListener("change", () => {
    applyFilters(); if (!view.length) seek(chunk, 1, 0); $("f-undecided").blur();
  });
  $("export").addEventListener("click", exportVerdicts);
  // for scripted checks (the page never needs it): the chunk on screen's cards, and which chunk that is
  window.lensReview = { state: () => state, get cards() { return CARDS; }, chunk: () => chunk, loaded: () => Object.keys(loaded).length };
  showChunk(0, 0);
})();
