"""Every recipe the repository ships parses and passes d3hf's settings checks."""

import glob
import os

import pytest

from d3hf.commands.distill import parse_distill_args
from tests.helpers import REPO

RECIPES = sorted(p for p in glob.glob(os.path.join(REPO, "recipes", "*", "*.yaml"))
                 if os.sep + "accelerate_configs" + os.sep not in p)


def test_recipes_are_found():
    assert len(RECIPES) >= 10  # a moved folder would otherwise leave this file testing nothing


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.relpath(p, REPO) for p in RECIPES])
def test_recipe_parses(path):
    args = parse_distill_args([path])
    assert args.run.output_dir.startswith("outputs/")
    with open(path) as f:
        assert f.readline().startswith("# ")  # each recipe says what it is and what it measured
