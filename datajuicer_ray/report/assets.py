"""The page's stylesheet and script, inlined into every report (no CDN, no network, no framework).

The script filters the sampled rows and, when the page is opened as ``report.html#selftest``, checks itself:
every image decoded, every filter value shows exactly the matching rows. It writes the result as JSON into
``#selftest-result``, which a headless browser's ``--dump-dom`` returns to the test.
"""

CSS = """
:root { --ok:#2f9e44; --bad:#e8590c; --muted:#868e96; --line:#dee2e6; --bg:#f8f9fa; --ink:#212529;
        --ins:#d3f9d8; --del:#ffe3e3; --accent:#4c6ef5; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); }
header, section { padding: 14px 28px; }
header { background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 17px; margin: 6px 0 10px; }
.sub { color: var(--muted); font-size: 13px; word-break: break-all; }
.kpis { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 12px; }
.kpi { background: var(--bg); border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px; min-width: 110px; }
.kpi b { display: block; font-size: 18px; }
.kpi span { color: var(--muted); font-size: 12px; }
.note { color: var(--muted); font-size: 13px; margin: 0 0 10px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 12px; }
.plots figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px; }
.plots img { width: 100%; height: auto; display: block; }
.run { display: grid; grid-template-columns: minmax(300px, 1fr) minmax(300px, 2fr); gap: 16px; }
table.kv { border-collapse: collapse; font-size: 13px; width: 100%; background: #fff; }
table.kv td { border-bottom: 1px solid var(--line); padding: 3px 8px; vertical-align: top; word-break: break-all; }
table.kv td:first-child { color: var(--muted); white-space: nowrap; word-break: normal; }
details { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 6px 10px; }
details pre { font-size: 12px; max-height: 420px; overflow: auto; }
.filters { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; background: #fff; padding: 10px 14px;
           border: 1px solid var(--line); border-radius: 8px; margin-bottom: 12px; position: sticky; top: 0; z-index: 2; }
.filters label { font-size: 13px; color: var(--muted); }
.filters select { margin-left: 4px; font-size: 13px; padding: 2px 4px; }
#shown { margin-left: auto; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; overflow: hidden;
        display: flex; flex-direction: column; }
.card[hidden] { display: none; }
.card.rejected { border-color: #ffc078; }
.thumb { position: relative; aspect-ratio: 1 / 1; background: #343a40; }
.thumb img { position: absolute; inset: 0; width: 100%; height: 100%; display: block; }
.thumb img.plain { opacity: 0; transition: opacity .15s; }
.thumb:hover img.plain { opacity: 1; }
.thumb .missing { position: absolute; inset: 0; display: flex; align-items: center; justify-content: center;
                  color: #f1f3f5; padding: 16px; text-align: center; font-size: 13px; }
.body { padding: 8px 10px 10px; display: flex; flex-direction: column; gap: 5px; }
.head { display: flex; flex-wrap: wrap; gap: 5px; align-items: center; }
.key { font: 12px ui-monospace, "DejaVu Sans Mono", monospace; color: var(--muted); word-break: break-all; }
.badge { font-size: 11px; border-radius: 10px; padding: 1px 7px; background: #e9ecef; white-space: nowrap; }
.badge.bad { background: #fff4e6; color: #d9480f; border: 1px solid #ffc078; }
.badge.good { background: #ebfbee; color: #2b8a3e; }
.error { font-size: 12px; color: #d9480f; word-break: break-word; }
.objects { display: flex; flex-wrap: wrap; gap: 4px; }
.obj { font-size: 12px; background: #edf2ff; color: #364fc7; border-radius: 4px; padding: 0 6px; }
.obj i { font-style: normal; color: var(--muted); margin-left: 3px; }
.cap { font-size: 13px; word-break: break-word; }
.cap .lab { display: block; font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.cap.candidate s { text-decoration-color: #c33; color: var(--muted); }
ins { background: var(--ins); text-decoration: none; }
del { background: var(--del); color: #a61e1e; }
.legend { font-size: 12px; color: var(--muted); }
#selftest-result { display: none; }
"""

JS = r"""
(function () {
  "use strict";
  var cards = Array.prototype.slice.call(document.querySelectorAll(".card"));
  var shown = document.getElementById("shown");
  var filters = {
    status: document.getElementById("f-status"),
    cls: document.getElementById("f-class"),
    rewritten: document.getElementById("f-rewritten")
  };
  function classes(card) { return JSON.parse(card.getAttribute("data-classes") || "[]"); }
  function matches(card, name, value) {
    if (value === "") return true;
    if (name === "status") return card.getAttribute("data-status") === value;
    if (name === "cls") return classes(card).indexOf(value) >= 0;
    return card.getAttribute("data-rewritten") === value;
  }
  function apply() {
    var n = 0;
    cards.forEach(function (card) {
      var keep = Object.keys(filters).every(function (name) { return matches(card, name, filters[name].value); });
      card.hidden = !keep;
      if (keep) n += 1;
    });
    shown.textContent = n + " of " + cards.length + " rows shown";
  }
  Object.keys(filters).forEach(function (name) { filters[name].addEventListener("change", apply); });
  apply();

  function isVisible(el) { return getComputedStyle(el).display !== "none" && el.getClientRects().length > 0; }
  function selftest() {
    var imgs = Array.prototype.slice.call(document.images);
    var result = {
      images: imgs.length,
      broken: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                  .map(function (i) { return i.getAttribute("alt") || i.className; }),
      cards: cards.length,
      filters: []
    };
    Object.keys(filters).forEach(function (name) {
      var select = filters[name];
      Array.prototype.forEach.call(select.options, function (opt) {
        if (opt.value === "") return;
        select.value = opt.value;
        select.dispatchEvent(new Event("change"));
        var visible = cards.filter(isVisible);
        result.filters.push({
          filter: name, value: opt.value, visible: visible.length,
          wrong: visible.filter(function (c) { return !matches(c, name, opt.value); }).length,
          missing: cards.filter(function (c) { return !isVisible(c) && matches(c, name, opt.value); }).length,
          counter: shown.textContent
        });
      });
      select.value = "";
      select.dispatchEvent(new Event("change"));
    });
    result.visible_after_reset = cards.filter(isVisible).length;
    document.getElementById("selftest-result").textContent = JSON.stringify(result);
  }
  if (location.hash === "#selftest") {
    if (document.readyState === "complete") selftest(); else window.addEventListener("load", selftest);
  }
})();
"""
