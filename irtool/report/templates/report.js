// irtool report viewer: before/after sliders and sortable tables. No dependencies, nothing fetched.
(function () {
  "use strict";
  function setSplit(figure, value) {
    var v = Math.max(0, Math.min(100, Number(value)));
    figure.querySelector(".after").style.clipPath = "inset(0 0 0 " + v + "%)";
    figure.querySelector(".divider").style.left = v + "%";
  }
  document.querySelectorAll(".compare").forEach(function (figure) {
    var card = figure.closest(".comparison");
    var range = card.querySelector("input[type=range]");
    var toggle = card.querySelector("button.toggle");
    range.addEventListener("input", function () { setSplit(figure, range.value); });
    // dragging or clicking on the picture moves the split too
    function fromPointer(event) {
      var box = figure.getBoundingClientRect();
      range.value = Math.round(100 * (event.clientX - box.left) / box.width);
      setSplit(figure, range.value);
    }
    figure.addEventListener("pointerdown", function (event) {
      if (event.target.closest("a")) { return; }
      fromPointer(event);
      figure.setPointerCapture(event.pointerId);
      figure.onpointermove = fromPointer;
    });
    figure.addEventListener("pointerup", function () { figure.onpointermove = null; });
    toggle.addEventListener("click", function () {
      // flip between all-before and all-after
      range.value = Number(range.value) > 0 ? 0 : 100;
      setSplit(figure, range.value);
      toggle.textContent = Number(range.value) > 0 ? "show after" : "show before";
    });
    setSplit(figure, range.value);
  });

  function cellValue(row, index) {
    var cell = row.cells[index];
    return cell.hasAttribute("data-v") ? cell.getAttribute("data-v") : cell.textContent.trim();
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var headers = table.tHead.rows[table.tHead.rows.length - 1].cells;
    Array.prototype.forEach.call(headers, function (th, index) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () {
        var descending = th.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var numeric = th.hasAttribute("data-numeric");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = cellValue(a, index), y = cellValue(b, index);
          var order = numeric ? Number(x) - Number(y) : x.localeCompare(y, undefined, { numeric: true });
          return descending ? -order : order;
        });
        var fragment = document.createDocumentFragment();
        rows.forEach(function (row) { fragment.appendChild(row); });
        body.appendChild(fragment);
      });
    });
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
