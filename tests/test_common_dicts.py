"""common/dicts.py: settings trees as flat paths and their differences, the one implementation behind
the curation fingerprint check, the resume check and the demo's reported commands.
Run: .venv/bin/python -m pytest tests/test_common_dicts.py -q
"""

from __future__ import annotations

import json

from common.dicts import differences, flatten


def test_flatten_gives_dotted_paths_and_lists_for_tuples():
    tree = {"optim": {"lr": 5e-6, "betas": (0.9, 0.98)}, "eval": {"manifest": {"batch_size": 8}}, "steps": 3,
            "empty": {}}
    assert flatten(tree) == {"optim.lr": 5e-6, "optim.betas": [0.9, 0.98], "eval.manifest.batch_size": 8, "steps": 3}
    # A tree written as JSON and read back is the same tree, tuples included.
    assert flatten(json.loads(json.dumps(tree))) == flatten(tree)


def test_differences_name_each_changed_added_and_removed_path_in_order():
    old = {"optim": {"lr": 5e-6, "betas": [0.9, 0.98]}, "steps": 3, "gone": 1}
    new = {"optim": {"lr": 1e-4, "betas": (0.9, 0.98)}, "steps": 3, "added": {"x": None}}
    assert differences(old, new) == [("gone", 1, None), ("optim.lr", 5e-6, 1e-4)]
    assert differences(old, new, missing="<unset>") == [("added.x", "<unset>", None), ("gone", 1, "<unset>"),
                                                        ("optim.lr", 5e-6, 1e-4)]
    assert differences(new, new) == []
