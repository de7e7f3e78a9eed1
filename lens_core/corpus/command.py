"""`lens synthesize`: the built-in corpus, written in the four datasets' released formats."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from lens_core.config import deep_merge, load_config, parse_overrides
from lens_core.corpus.write import write_corpus

log = logging.getLogger("lens")


def add_parser(sub) -> None:
    p = sub.add_parser("synthesize", help="write the built-in synthetic CT corpus in the four released formats",
                       description="Write the built-in multi-dataset CT corpus (DeepLesion-, LUNA16-, LiTS- and "
                                   "NIH-LN-like, each in its released format) and its hidden full ground truth.")
    p.add_argument("--out", required=True, type=Path, help="corpus folder (replaced atomically)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", type=Path, help="config.yaml whose `corpus:` section overrides the defaults")
    src.add_argument("--config-json", metavar="JSON",
                     help="the `corpus:` section inline, as a JSON mapping (the workflow passes its own)")
    p.add_argument("--seed", type=int, help="override corpus.seed")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=YAML",
                   help="override corpus keys, e.g. --set deeplesion.patients=0 luna.cases=24 (a held-out "
                        "single-type cohort, as `snakemake fig7` writes)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_synthesize)


def _synthesize(args) -> int:
    if args.config_json is not None:
        try:
            cfg = json.loads(args.config_json)
        except ValueError as e:
            raise ValueError(f"--config-json: not valid JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError("--config-json: the corpus config must be a mapping")
    else:
        cfg = dict(load_config(args.config).get("corpus", {})) if args.config else {}
    cfg = deep_merge(cfg, parse_overrides(args.set))
    if args.seed is not None:
        cfg["seed"] = args.seed
    t = time.perf_counter()
    stats = write_corpus(args.out, cfg, progress=not args.no_progress)
    log.info("corpus written to %s in %.1f s\n%s", args.out, time.perf_counter() - t, stats.to_string(index=False))
    return 0
