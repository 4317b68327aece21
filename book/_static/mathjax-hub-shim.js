// ipywidgets 8 (the renderer in widgets/embed.js) typesets widget labels through MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book loads MathJax 3, which has no Hub, so
// every widget on a page with equations would throw. This hands those calls to MathJax 3.
// By DOMContentLoaded the deferred MathJax script has run; the widgets render later, on "load".
document.addEventListener("DOMContentLoaded", function () {
  var mj = window.MathJax;
  if (!mj || mj.Hub) return;
  mj.Hub = {
    Queue: function (command) {
      var element = command && command[2];
      if (!element || !mj.startup || !mj.startup.promise) return;
      mj.startup.promise.then(function () { return mj.typesetPromise([element]); });
    },
  };
});
