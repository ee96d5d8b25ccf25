// Refreshes the figures in place: fetches this page again and swaps its
// <main>. Without JavaScript the <noscript> meta refresh reloads the page.
(function () {
  var every = Number(document.body.getAttribute("data-refresh")) * 1000;
  if (!every || !window.fetch || !window.DOMParser) return;
  function refresh() {
    if (document.hidden) return;
    fetch(location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error(r.status);
        return r.text();
      })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var next = doc.querySelector("main");
        if (next) document.querySelector("main").replaceWith(next);
        document.title = doc.title;
        document.body.classList.remove("refresh-failed");
      })
      .catch(function () {
        document.body.classList.add("refresh-failed");
      });
  }
  setInterval(refresh, every);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
