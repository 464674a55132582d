// ibkit console: live updates without a reload. The page's
// #live[data-live-src] names an endpoint that answers the same sections
// as HTML (rendered and escaped by the service); every few seconds this
// fetches it and swaps each <section id> whose markup changed, leaving the
// rest of the page (scroll position, open links) alone.
"use strict";
(function () {
  var live = document.getElementById("live");
  if (!live) {
    return;
  }
  var src = live.getAttribute("data-live-src");
  var status = document.getElementById("live-status");
  var periodMs = 2000;
  var say = function (text) {
    if (status) {
      status.textContent = text;
    }
  };
  var poll = function () {
    fetch(src, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          say("Session expired: reload to log in again.");
          return null;
        }
        if (!r.ok) {
          throw new Error("HTTP " + r.status);
        }
        return r.text();
      })
      .then(function (text) {
        if (text === null) {
          return;
        }
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelectorAll("section[id]");
        var changed = 0;
        var seen = {};
        fresh.forEach(function (sec) {
          seen[sec.id] = true;
          var old = document.getElementById(sec.id);
          if (!old) {
            live.appendChild(document.importNode(sec, true));
            changed++;
          } else if (old.innerHTML !== sec.innerHTML) {
            old.replaceWith(document.importNode(sec, true));
            changed++;
          }
        });
        live.querySelectorAll("section[id]").forEach(function (sec) {
          if (!seen[sec.id]) {
            sec.remove();
            changed++;
          }
        });
        live.setAttribute("data-updated", String(Date.now()));
        say("Updated " + new Date().toLocaleTimeString() +
          (changed ? " (" + changed + " changed)" : ""));
        setTimeout(poll, periodMs);
      })
      .catch(function (e) {
        say("Update failed (" + e.message + "); retrying.");
        setTimeout(poll, periodMs * 2);
      });
  };
  setTimeout(poll, periodMs);
})();
