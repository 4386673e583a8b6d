"""Commands that bring ASI-Arch's published work into an experiment: import-asi-arch, knowledge import.

The readers are :mod:`asiarch.tools.asi_arch` and :mod:`asiarch.propose.llm.knowledge`; each
command's parser is built right below its handler.
"""

from __future__ import annotations

from pathlib import Path

from asiarch.cli.common import die, not_an_experiment


# ---------------------------------------------------------------------- asiarch import-asi-arch


def cmd_import_asi_arch(args) -> int:
    """Import ASI-Arch's published layers as proposed candidates (checked and trained by the next run)."""
    from asiarch.tools.asi_arch import AsiArchError, import_command

    names = [n.strip() for part in args.names or () for n in part.split(",") if n.strip()]
    try:
        return import_command(args.architectures, args.into, tree=args.tree, top=args.top, names=names or None,
                              cognition=args.cognition)
    except AsiArchError as exc:
        return die(str(exc))


def import_asi_arch_parser(sub) -> None:
    s = sub.add_parser("import-asi-arch", help="import ASI-Arch's published layers into an experiment")
    s.add_argument("architectures", help="ASI-Arch's architectures.json (a list of layers with code and results)")
    s.add_argument("--into", required=True, metavar="DIR", help="experiment directory (created with defaults "
                                                                "and bf16 precision if it has no config.toml)")
    s.add_argument("--tree", help="ASI-Arch's tree.json: records each layer's ancestry beyond its parent")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--top", type=int, help="import only the K best by ASI-Arch's reported fitness")
    g.add_argument("--names", action="append", metavar="A,B", help="import only these layers (names or display "
                                                                   "names, comma-separated; repeatable)")
    s.add_argument("--cognition", metavar="DIR", help="ASI-Arch's cognition/ papers, into the experiment's knowledge "
                                                      "base (as `asiarch knowledge import`)")
    s.set_defaults(func=cmd_import_asi_arch)


# ---------------------------------------------------------------------- asiarch knowledge import


def cmd_knowledge_import(args) -> int:
    """Import ASI-Arch's cognition files into an experiment's knowledge base (the Researcher reads it)."""
    from asiarch.layout import ExperimentDir
    from asiarch.propose.llm.knowledge import cognition_entries, import_cognition
    from asiarch.store import Store

    exp = ExperimentDir(Path(args.dir))
    if (why := not_an_experiment(exp)) is not None:
        return die(why)
    try:
        cognition_entries(args.cognition)  # read and parse everything before writing anything
    except ValueError as exc:
        return die(str(exc))
    with Store.open(exp.db) as store:
        entries = import_cognition(args.cognition, store)
    papers = len({e.key.split("#")[0] for e in entries})
    print(f"imported {len(entries)} insights from {papers} papers in {args.cognition} into {exp.root}'s knowledge "
          "base; the Researcher retrieves from it with the shipped entries")
    return 0


def knowledge_parser(sub) -> None:
    s = sub.add_parser("knowledge", help="the knowledge base the Researcher reads")
    ks = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = ks.add_parser("import", help="import ASI-Arch's cognition/ papers (JSON insights) into DIR's knowledge base")
    k.add_argument("cognition", metavar="COGNITION_DIR", help="ASI-Arch's cognition/ folder (one JSON file per paper)")
    k.add_argument("dir", metavar="DIR", help="experiment directory")
    k.set_defaults(func=cmd_knowledge_import)


def register(sub) -> None:
    """Add the parsers of `asiarch import-asi-arch` and `asiarch knowledge`."""
    import_asi_arch_parser(sub)
    knowledge_parser(sub)
