// MathJax for pymdownx.arithmatex (generic mode): \( ... \) inline, \[ ... \] display.
// MathJax itself is served from this site (javascripts/mathjax/), never from a CDN.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// mkdocs-material's instant navigation swaps pages without reloading: typeset each new one.
document$.subscribe(() => {
  if (!window.MathJax.startup || !window.MathJax.startup.promise) {
    return; // MathJax is still loading; it typesets the first page when it starts
  }
  window.MathJax.startup.promise.then(() => {
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
