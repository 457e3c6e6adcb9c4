"""MkDocs hooks of probgen's documentation site (loaded by ``hooks:`` in mkdocs.yml).

Two things the plain mkdocs build cannot do:

* The notebooks live in ``guides/`` at the top of the repository (the tests execute them
  there), not under ``docs/``. ``on_files`` adds them to the site as ``guides/<name>.ipynb``
  before mkdocs-jupyter converts them (they are rendered as stored: without outputs, not
  executed).
* The API reference is written from the code itself: one page per public package listing
  every name of its ``__all__`` (each rendered by mkdocstrings from its docstring), then the
  public functions and classes of its submodules that the package does not re-export. A name
  exported at several levels (``probgen.fit`` is ``probgen.train.fit``) is rendered once, on
  the page of the package that defines it, and linked from the others; so a renamed or
  removed name changes the reference by itself, and a name whose docstring or signature
  mkdocstrings cannot read fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]

# (package, one line shown in the reference's index); the order of the site's API pages.
PACKAGES = [
    ("probgen", "the top level: `fit`, `load` and the step types, re-exported"),
    ("probgen.train", "the fit loop, steps and phases, callbacks, checkpoints, settings"),
    ("probgen.models", "Pyro model/guide pairs, one family per file, and the `MODELS` registry"),
    (
        "probgen.flows",
        "flow builders (`nice`, `realnvp`, `glow`, `denseflow`) and their transforms",
    ),
    ("probgen.infer", "objectives by name, adversarial losses, flow guides, MCMC on latents"),
    ("probgen.metrics", "ELBO, importance-sampled NLL, bits/dim, FID/KID, Parzen, reports"),
    ("probgen.inspect", "ArviZ conversion and posterior plots"),
    ("probgen.viz", "matplotlib figures"),
    ("probgen.data", "data sets, preprocessing, device-resident batches"),
    ("probgen.nn", "plain PyTorch networks (no Pyro inside)"),
    ("probgen.errors", "the exceptions probgen raises for bad input"),
]


def api_page_uri(package: str) -> str:
    return f"api/{package}.md"


def _public_names(module) -> list[str]:
    """``__all__`` when the module has one, else its own public classes and functions."""
    exported = getattr(module, "__all__", None)
    if exported is not None:
        return [n for n in exported if not n.startswith("_")]
    return [
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == module.__name__
    ]


class _StaticView:
    """What mkdocstrings can read without importing (griffe's static view of the package)."""

    def __init__(self):
        import griffe

        self._errors = (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError)
        self._root = griffe.load("probgen", search_paths=[str(ROOT)], resolve_aliases=False)

    def has(self, path: str) -> bool:
        try:
            obj = self._root if path == "probgen" else self._root[path[len("probgen.") :]]
            if obj.is_alias:
                _ = obj.final_target  # raises when the alias leads nowhere
            return True
        except self._errors:
            return False


def _static_path(view: _StaticView, module, attr: str) -> str:
    """The dotted path to render ``module.attr`` by: the public one when mkdocstrings can
    follow it statically, else where the object is defined (a name handed out lazily by a
    module ``__getattr__``, or re-exported from a module that does so)."""
    public = f"{module.__name__}.{attr}"
    if view.has(public):
        return public
    obj = getattr(module, attr)
    if not hasattr(obj, "__qualname__"):
        # a constant (a number, a tuple) re-exported: render it where a module of the package
        # defines it under the same name
        for name in sorted(sys.modules):
            owner = sys.modules[name]
            if (
                name.startswith("probgen.")
                and owner is not None
                and getattr(owner, attr, None) is obj
                and view.has(f"{name}.{attr}")
            ):
                return f"{name}.{attr}"
        return public
    return f"{obj.__module__}.{obj.__qualname__}"


def _submodules(package) -> list:
    """Public modules under ``package`` that no other listed package covers."""
    if not hasattr(package, "__path__"):
        return []
    others = [
        name
        for name, _ in PACKAGES
        if name != package.__name__ and name.startswith(package.__name__ + ".")
    ]
    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if any(info.name == o or info.name.startswith(o + ".") for o in others):
            continue
        found.append(importlib.import_module(info.name))
    return found


def api_pages() -> dict[str, str]:
    """The reference's Markdown, page URI -> text."""
    modules = {name: importlib.import_module(name) for name, _ in PACKAGES}
    view = _StaticView()
    # Where each object is rendered: the deepest listed package that exports it, under the
    # path (public, or where it is defined) that mkdocstrings can follow.
    home: dict[int, tuple[str, str]] = {}
    for name in sorted(modules, key=lambda n: n.count("."), reverse=True):
        module = modules[name]
        for attr in _public_names(module):
            obj = getattr(module, attr)
            if not inspect.ismodule(obj) and id(obj) not in home:
                home[id(obj)] = (f"{name}.{attr}", _static_path(view, module, attr))

    pages = {}
    rendered: set[int] = set()
    for name, summary in PACKAGES:
        module = modules[name]
        lines = [
            f"# `{name}`",
            "",
            f"*{summary}.*",
            "",
            f"::: {name}",
            "    options:",
            "      members: false",
            "      show_root_heading: false",
            "      show_root_toc_entry: false",
            "",
        ]
        elsewhere = []
        for attr in _public_names(module):
            obj = getattr(module, attr)
            if inspect.ismodule(obj):
                continue
            public, path = home[id(obj)]
            if public != f"{name}.{attr}" or id(obj) in rendered:
                elsewhere.append(f"- `{name}.{attr}`: see [`{public}`][{path}]")
                continue
            rendered.add(id(obj))
            lines += [f"::: {path}", ""]
        if elsewhere:
            lines += ["## Re-exported here", ""] + elsewhere + [""]
        extra = []
        for sub in _submodules(module):
            own = [
                n
                for n in _public_names(sub)
                if id(getattr(sub, n)) not in rendered and not inspect.ismodule(getattr(sub, n))
            ]
            if not own:
                continue
            extra += [f"### `{sub.__name__}`", ""]
            for attr in own:
                rendered.add(id(getattr(sub, attr)))
                extra += [
                    f"::: {_static_path(view, sub, attr)}",
                    "    options:",
                    "      heading_level: 4",
                    "",
                ]
        if extra:
            lines += [
                "## In submodules",
                "",
                "Public names of the submodules that the package does not re-export.",
                "",
            ] + extra
        pages[api_page_uri(name)] = "\n".join(lines) + "\n"
    index = [
        "# API reference",
        "",
        "Written from the docstrings by mkdocstrings; every name of each package's "
        "`__all__` is on its package's page.",
        "",
    ]
    index += [f"- [`{name}`]({name}.md): {summary}" for name, summary in PACKAGES]
    pages["api/index.md"] = "\n".join(index) + "\n"
    return pages


@event_priority(100)  # before mkdocs-jupyter looks for notebooks among the files
def on_files(files, config):
    for notebook in sorted((ROOT / "guides").glob("*.ipynb")):
        files.append(
            File(
                f"guides/{notebook.name}",
                str(ROOT),
                config["site_dir"],
                config["use_directory_urls"],
            )
        )
    for uri, text in api_pages().items():
        files.append(File.generated(config, uri, content=text))
    return files
