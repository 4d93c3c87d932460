// Refresh the live part of the dashboard without reloading the page.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var connection = document.getElementById("connection");
  var every = parseInt(live.dataset.refreshMs, 10) || 5000;
  function refresh() {
    fetch(live.dataset.liveUrl, {cache: "no-store", credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) { live.innerHTML = html; connection.textContent = ""; })
      .catch(function (error) {
        connection.textContent = "Not updated: " + error.message + "; retrying.";
      })
      .finally(function () { setTimeout(refresh, every); });
  }
  setTimeout(refresh, every);
})();
