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

  // "Clear" beside optional choices: a radio cannot be unticked by tapping it again.
  Array.prototype.forEach.call(document.querySelectorAll("[data-clear]"), function (button) {
    button.addEventListener("click", function () {
      var box = document.getElementById(button.dataset.clear);
      Array.prototype.forEach.call(box ? box.querySelectorAll("input") : [], function (i) { i.checked = false; });
    });
  });

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
