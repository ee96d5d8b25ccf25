// Refreshes the figures in place: fetches this page again and swaps its
// <main>. Without JavaScript the <noscript> meta refresh reloads the page.
(function () {
  var every = Number(document.body.getAttribute("data-refresh")) * 1000;
  if (!every || !window.fetch || !window.DOMParser) return;
  function refresh() {
    if (document.hidden) return;
    // Not location.href, nor a relative URL (which inherits the base's):
    // a URL with a login in it cannot be fetched. The browser sends the
    // login it holds for this origin.
    fetch(location.origin + location.pathname + location.search, { credentials: "same-origin", cache: "no-store" })
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
        document.body.setAttribute("data-refreshed", new Date().toISOString());
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
