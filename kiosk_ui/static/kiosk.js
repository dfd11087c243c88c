// MammoAI-TR kiosk: heatmap toggle, waiting for a result, status bar refresh, sign-out after inactivity.
// Served from the box; no external scripts.
(function () {
  "use strict";
  var toggle = document.getElementById("heatmap-toggle");
  var views = document.getElementById("views");
  if (toggle && views) {
    toggle.addEventListener("click", function () {
      var on = views.classList.toggle("heatmap-on");
      views.classList.toggle("heatmap-off", !on);
      toggle.setAttribute("aria-pressed", on ? "true" : "false");
      toggle.textContent = on ? toggle.dataset.on : toggle.dataset.off;
    });
  }

  // The whole worklist row opens the study (the name cell stays a real link for the keyboard and screen readers).
  Array.prototype.forEach.call(document.querySelectorAll("tr.row[data-href]"), function (row) {
    row.addEventListener("click", function (e) {
      if (e.target.closest("a, button, input, select, label")) { return; }
      window.location.href = row.dataset.href;
    });
  });

  // Print from the page itself: the referral loads in a hidden frame and prints there (a kiosk browser may not let a
  // new tab be left again).
  var printButton = document.getElementById("print-link");
  if (printButton) {
    printButton.addEventListener("click", function () {
      var old = document.getElementById("print-frame");
      if (old) { old.remove(); }
      var frame = document.createElement("iframe");
      frame.id = "print-frame";
      frame.className = "visually-hidden";
      frame.setAttribute("aria-hidden", "true");
      frame.tabIndex = -1;
      frame.addEventListener("load", function () {
        try { frame.contentWindow.focus(); frame.contentWindow.print(); } catch (err) { return; /* the note stays */ }
        var shown = document.getElementById("print-note");
        if (shown) { setTimeout(function () { shown.hidden = true; }, 6000); }
      });
      frame.src = printButton.dataset.print;
      document.body.appendChild(frame);
      var note = document.getElementById("print-note");
      if (note) { note.textContent = printButton.dataset.busy; note.hidden = false; }
    });
  }

  // File pickers: say in the page's language what was chosen.
  Array.prototype.forEach.call(document.querySelectorAll(".picker input[type=file]"), function (input) {
    var out = document.getElementById(input.id + "-chosen");
    input.addEventListener("change", function () {
      var n = input.files ? input.files.length : 0;
      out.textContent = n ? out.dataset.some.replace("{n}", n) : out.dataset.none;
    });
  });

  // "Clear" beside optional choices: a radio cannot be unticked by tapping it again.
  Array.prototype.forEach.call(document.querySelectorAll("[data-clear]"), function (button) {
    button.addEventListener("click", function () {
      var box = document.getElementById(button.dataset.clear);
      Array.prototype.forEach.call(box ? box.querySelectorAll("input") : [], function (i) { i.checked = false; });
    });
  });

  // The viewer: a view full screen; zoom (wheel, buttons), pan (drag), brightness/contrast over the image's own window,
  // invert, heatmap opacity, and the same view of the other breast beside it.
  var dialog = document.getElementById("viewer");
  if (dialog && views) {
    var stage = document.getElementById("viewer-stage");
    var state = { scale: 1, x: 0, y: 0, figure: null, compare: false };
    var ctl = function (id) { return document.getElementById(id); };
    var apply = function () {
      var b = ctl("viewer-brightness").value, c = ctl("viewer-contrast").value, inv = ctl("viewer-invert").checked ? 1 : 0;
      var op = ctl("viewer-opacity") ? ctl("viewer-opacity").value / 100 : 1;
      Array.prototype.forEach.call(stage.querySelectorAll(".layer"), function (l) {
        l.style.transform = "translate(" + state.x + "px," + state.y + "px) scale(" + state.scale + ")";
      });
      Array.prototype.forEach.call(stage.querySelectorAll("img.base"), function (i) {
        i.style.filter = "brightness(" + b + "%) contrast(" + c + "%) invert(" + inv + ")";
      });
      Array.prototype.forEach.call(stage.querySelectorAll("img.overlay"), function (i) { i.style.opacity = op; });
    };
    var priorPane = function (figure) {
      var fake = document.createElement("figure");
      var img = document.createElement("img");
      img.className = "base";
      img.setAttribute("src", figure.dataset.priorSrc);
      img.alt = figure.dataset.priorCaption;
      var cap = document.createElement("figcaption");
      cap.textContent = figure.dataset.priorCaption;
      fake.appendChild(img);
      fake.appendChild(cap);
      return pane(fake);
    };
    var pane = function (figure) {
      var p = document.createElement("div");
      p.className = "viewer-pane";
      var layer = document.createElement("div");
      layer.className = "layer";
      Array.prototype.forEach.call(figure.querySelectorAll("img"), function (img) {
        var copy = document.createElement("img");
        copy.className = img.className;
        copy.alt = img.alt;
        copy.src = img.getAttribute("src") + (img.classList.contains("base") ? "?size=1536" : "");
        copy.draggable = false;
        layer.appendChild(copy);
      });
      var cap = document.createElement("span");
      cap.className = "caption";
      cap.textContent = figure.querySelector("figcaption").textContent;
      p.appendChild(layer);
      p.appendChild(cap);
      return p;
    };
    var render = function () {
      stage.innerHTML = "";
      var f = state.figure, shown = [f];
      if (state.compare === "sides") {
        var other = views.querySelector('figure[data-kind="' + f.dataset.kind + '"]:not([data-side="' + f.dataset.side + '"])');
        if (other) { shown = f.dataset.side === "R" ? [f, other] : [other, f]; }
      }
      shown.forEach(function (fig) { stage.appendChild(pane(fig)); });
      if (state.compare === "prior" && f.dataset.priorSrc) { stage.appendChild(priorPane(f)); }
      ctl("viewer-title").textContent = shown.map(function (fig) { return fig.querySelector("figcaption b").textContent; }).join(" · ");
      var cmp = ctl("viewer-compare");
      cmp.setAttribute("aria-pressed", state.compare === "sides" ? "true" : "false");
      cmp.textContent = state.compare === "sides" ? dialog.dataset.single : dialog.dataset.compare;
      if (ctl("viewer-prior")) { ctl("viewer-prior").setAttribute("aria-pressed", state.compare === "prior" ? "true" : "false"); }
      apply();
    };
    var reset = function () { state.scale = 1; state.x = 0; state.y = 0; apply(); };
    Array.prototype.forEach.call(views.querySelectorAll("[data-viewer]"), function (btn) {
      btn.addEventListener("click", function () {
        state.figure = btn.closest("figure");
        state.compare = "";
        state.scale = 1; state.x = 0; state.y = 0;
        render();
        dialog.showModal();
      });
    });
    Array.prototype.forEach.call(dialog.querySelectorAll("[data-zoom]"), function (b) {
      b.addEventListener("click", function () { state.scale = Math.min(8, Math.max(1, state.scale * parseFloat(b.dataset.zoom))); apply(); });
    });
    ctl("viewer-reset").addEventListener("click", function () {
      ctl("viewer-brightness").value = 100; ctl("viewer-contrast").value = 100; ctl("viewer-invert").checked = false;
      if (ctl("viewer-opacity")) { ctl("viewer-opacity").value = 100; }
      reset();
    });
    ctl("viewer-compare").addEventListener("click", function () { state.compare = state.compare === "sides" ? "" : "sides"; render(); });
    if (ctl("viewer-prior")) {
      ctl("viewer-prior").addEventListener("click", function () { state.compare = state.compare === "prior" ? "" : "prior"; render(); });
    }
    ctl("viewer-close").addEventListener("click", function () { dialog.close(); });
    ["viewer-brightness", "viewer-contrast", "viewer-invert", "viewer-opacity"].forEach(function (id) {
      if (ctl(id)) { ctl(id).addEventListener("input", apply); }
    });
    stage.addEventListener("wheel", function (e) {
      e.preventDefault();
      state.scale = Math.min(8, Math.max(1, state.scale * (e.deltaY < 0 ? 1.15 : 0.87)));
      apply();
    }, { passive: false });
    var drag = null;
    stage.addEventListener("pointerdown", function (e) { drag = { x: e.clientX - state.x, y: e.clientY - state.y }; stage.setPointerCapture(e.pointerId); });
    stage.addEventListener("pointermove", function (e) { if (drag) { state.x = e.clientX - drag.x; state.y = e.clientY - drag.y; apply(); } });
    stage.addEventListener("pointerup", function () { drag = null; });
  }

  // A study still being received or analysed: poll its state and reload when it changes.
  var study = document.getElementById("study");
  if (study && study.dataset.pending === "yes") {
    var uid = encodeURIComponent(study.dataset.study);
    var initial = study.dataset.status;
    var poll = function () {
      fetch("/studies/" + uid + "/state.json", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (j) { if (j && j.status !== initial) { window.location.reload(); } else { setTimeout(poll, 2000); } })
        .catch(function () { setTimeout(poll, 5000); });
    };
    setTimeout(poll, 2000);
  }

  // Status bar: refresh online state, outbox and disk every 30 s.
  var badge = document.getElementById("net-badge");
  if (badge && document.body.dataset.idleS !== "0") {
    setInterval(function () {
      fetch("/statusbar.json", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (j) {
          if (!j) { return; }
          badge.textContent = j.label;
          badge.className = "badge " + (j.online ? "online" : "offline");
          document.getElementById("bar-outbox").textContent = j.outbox;
          document.getElementById("bar-disk").textContent = j.free;
        }).catch(function () {});
    }, 30000);
  }

  // Sign out by itself after the configured inactivity (the server enforces it too).
  var idle = parseInt(document.body.dataset.idleS || "0", 10);
  var form = document.getElementById("logout-form");
  if (idle > 0 && form) {
    var timer;
    var arm = function () {
      clearTimeout(timer);
      timer = setTimeout(function () { form.elements.reason.value = "idle"; form.submit(); }, idle * 1000);
    };
    ["click", "keydown", "touchstart", "scroll"].forEach(function (e) { document.addEventListener(e, arm, { passive: true }); });
    arm();
  }
})();
