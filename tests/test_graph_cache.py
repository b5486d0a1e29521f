"""The lowered-graph cache of zoo models: what comes back equals a fresh lowering, bit for bit; any change of
content is a different key; a damaged entry is lowered again; TERSIM_CACHE_DIR=off turns it off."""
import numpy as np
import pytest
import torch

from tersim.frontend import graph_cache
from tersim.frontend.lower import lower_module


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.MaxPool2d(2, ceil_mode=True), torch.nn.Conv2d(8, 6, 1),
                               torch.nn.Hardtanh(0.0, 6.0), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(6, 4)).eval()


def assert_same_graph(a, b):
    assert (a.name, a.output, len(a.nodes)) == (b.name, b.output, len(b.nodes))
    for x, y in zip(a.nodes, b.nodes):
        assert (x.name, x.op, x.inputs, x.shape) == (y.name, y.op, y.inputs, y.shape)
        assert x.attrs == y.attrs and [type(v) for v in x.attrs.values()] == [type(v) for v in y.attrs.values()]
        for u, v in ((x.weight, y.weight), (x.bias, y.bias)):
            assert (u is None) == (v is None)
            if u is not None:
                assert u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes()
        assert (x.bn is None) == (y.bn is None)
        if x.bn is not None:
            assert x.bn.keys() == y.bn.keys() and x.bn["eps"] == y.bn["eps"]
            assert all(np.array_equal(x.bn[k], y.bn[k]) for k in x.bn if k != "eps")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(graph_cache.ENV_VAR, str(tmp_path))
    return tmp_path / "graphs"


def test_cached_graph_equals_a_fresh_lowering(cache):
    x = torch.randn(2, 3, 16, 16)
    fresh = lower_module(tiny_net(), x, "tiny")
    first = graph_cache.lower_zoo_module(tiny_net(), x, "tiny")        # lowered and stored
    assert len(list(cache.glob("*.npz"))) == 1
    second = graph_cache.lower_zoo_module(tiny_net(), x, "tiny")       # read back
    assert_same_graph(fresh, first)
    assert_same_graph(fresh, second)
    assert any(n.bn is not None for n in second.nodes) and any(n.attrs.get("ceil_mode") for n in second.nodes)


def test_key_follows_content(cache):
    x = torch.randn(2, 3, 16, 16)
    base = graph_cache.module_key(tiny_net(), (3, 16, 16), "tiny")
    assert graph_cache.module_key(tiny_net(), (3, 16, 16), "tiny") == base
    assert graph_cache.module_key(tiny_net(seed=1), (3, 16, 16), "tiny") != base       # other weights
    net = tiny_net()
    net[1].running_mean += 1                                                          # a buffer
    assert graph_cache.module_key(net, (3, 16, 16), "tiny") != base
    assert graph_cache.module_key(tiny_net(), (3, 32, 32), "tiny") != base             # other input shape
    assert graph_cache.module_key(tiny_net(), (3, 16, 16), "other") != base            # other name
    graph_cache.lower_zoo_module(tiny_net(seed=1), x, "tiny")
    assert_same_graph(graph_cache.lower_zoo_module(tiny_net(seed=1), x, "tiny"), lower_module(tiny_net(seed=1), x, "tiny"))


def test_damaged_entry_is_lowered_again(cache):
    x = torch.randn(2, 3, 16, 16)
    graph_cache.lower_zoo_module(tiny_net(), x, "tiny")
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    assert graph_cache.load(entry.stem) is None
    assert_same_graph(graph_cache.lower_zoo_module(tiny_net(), x, "tiny"), lower_module(tiny_net(), x, "tiny"))
    assert graph_cache.load(entry.stem) is not None                                    # rewritten


def test_off(monkeypatch, tmp_path):
    monkeypatch.setenv(graph_cache.ENV_VAR, "off")
    assert graph_cache.cache_dir() is None
    graph_cache.lower_zoo_module(tiny_net(), torch.randn(2, 3, 16, 16), "tiny")
    assert not list(tmp_path.iterdir())


def test_seeded_zoo_model_found_by_recipe_without_building(cache):
    x = torch.randn(2, 3, 16, 16)
    calls = []

    def build():
        calls.append("build")
        return tiny_net()

    def example():
        calls.append("example")
        return x

    first = graph_cache.lower_zoo_recipe("tiny", 0, (3, 16, 16), build, example)
    assert calls == ["build", "example"] and len(list(cache.glob("*.key"))) == 1
    second = graph_cache.lower_zoo_recipe("tiny", 0, (3, 16, 16), build, example)
    assert calls == ["build", "example"]                                              # neither built nor hashed
    assert_same_graph(second, first)
    assert_same_graph(second, lower_module(tiny_net(), x, "tiny"))
    # another seed, shape or name is another recipe
    keys = {graph_cache.recipe_key("tiny", 0, (3, 16, 16)), graph_cache.recipe_key("tiny", 1, (3, 16, 16)),
            graph_cache.recipe_key("tiny", 0, (3, 32, 32)), graph_cache.recipe_key("other", 0, (3, 16, 16))}
    assert len(keys) == 4


@pytest.mark.parametrize("damage", ["entry", "alias"])
def test_recipe_with_a_damaged_entry_or_alias_builds_again(cache, damage):
    x = torch.randn(2, 3, 16, 16)
    graph_cache.lower_zoo_recipe("tiny", 0, (3, 16, 16), tiny_net, lambda: x)
    (entry,), (alias,) = cache.glob("*.npz"), cache.glob("*.key")
    if damage == "entry":
        entry.write_bytes(entry.read_bytes()[:100])
    else:
        alias.write_text("../../etc/passwd")
    built = []
    graph = graph_cache.lower_zoo_recipe("tiny", 0, (3, 16, 16), lambda: built.append(1) or tiny_net(), lambda: x)
    assert built == [1]
    assert_same_graph(graph, lower_module(tiny_net(), x, "tiny"))
    assert alias.read_text() == entry.stem and graph_cache.load(entry.stem) is not None   # both rewritten


def test_zoo_name_by_recipe_equals_the_built_module(cache):
    from tersim.frontend import import_model
    from tersim.models.zoo import build

    first = import_model("resnet18")                     # built, lowered, stored with its recipe
    assert len(list(cache.glob("*.key"))) == 1
    again = import_model("resnet18")                     # by recipe
    assert_same_graph(again, first)
    module = build("resnet18")
    assert_same_graph(again, graph_cache.lower_zoo_module(module, torch.randn(2, 3, 224, 224), "resnet18"))
    assert len(list(cache.glob("*.npz"))) == 1           # the module's content key is the recipe's entry
