"""Real models on real data: a torchvision-format state dict (--weights) on an image folder (--data DIR),
checked against a direct PyTorch evaluation whose preprocessing is written here independently."""
from __future__ import annotations

import json
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from tersim.cli import main
from tersim.errors import DataError, ModelLoadError
from tersim.images import ImageFolderDataset, parse_preprocess, scan_folder
from tersim.models import zoo
from tersim.models.weights import read_state_dict

Image = pytest.importorskip("PIL.Image")
HW = "hw_configs/default.yaml"
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
# (height, width, mode) per image, two per class: portrait, landscape, grey, RGBA, odd sizes
IMAGES = [[(40, 23, "RGB"), (19, 57, "RGB")], [(33, 33, "L"), (61, 30, "RGB")], [(24, 50, "RGBA"), (45, 31, "RGB")]]


def _write_folder(root, rng) -> None:
    for c, specs in enumerate(IMAGES):
        folder = root / f"class_{'abc'[c]}"
        folder.mkdir(parents=True)
        for i, (h, w, mode) in enumerate(specs):
            base = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
            base[..., c] = np.clip(base[..., c].astype(int) + 90, 0, 255)  # a class colour
            img = Image.fromarray(base, "RGBA").convert(mode)
            img.save(folder / f"img_{i}.png")
        (folder / "notes.txt").write_text("not an image: skipped")


def _direct_preprocess(path) -> torch.Tensor:
    """The torchvision evaluation recipe, spelled out: Resize(256) bilinear, CenterCrop(224), ToTensor, Normalize."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    img = img.crop((left, top, left + 224, top + 224))
    t = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)
    return (t - MEAN) / STD


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """folder/, r18.pth (torchvision keys, no num_batches_tracked like old torchvision files), direct x/y/logits."""
    d = tmp_path_factory.mktemp("images")
    _write_folder(d / "folder", np.random.default_rng(0))
    model = zoo.build("resnet18", seed=5)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.05)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    paths = sorted((d / "folder").glob("class_*/*.png"))
    y = torch.tensor([ord(p.parent.name[-1]) - ord("a") for p in paths])
    x = torch.stack([_direct_preprocess(p) for p in paths])
    # a head that separates the images (targets with two deliberate errors): predictions vary, accuracy 4/6
    with torch.no_grad():
        features = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
        targets = torch.tensor([0, 1, 1, 1, 2, 0])
        onehot = torch.nn.functional.one_hot(targets, 1000).float() * 10
        model.fc.weight.copy_(torch.linalg.lstsq(features.double(), onehot.double()).solution.T.float())
        model.fc.bias.zero_()
        logits = model(x)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, d / "r18.pth")
    return d, x.numpy(), y.numpy(), logits.numpy()


def test_folder_scan_and_labels_follow_sorted_folder_names(files):
    d, _, y, _ = files
    samples, classes = scan_folder(d / "folder")
    assert classes == ["class_a", "class_b", "class_c"]
    assert [label for _, label in samples] == list(y)
    assert all(path.endswith(".png") for path, _ in samples)


def test_imagenet_preprocessing_equals_the_direct_recipe_bit_for_bit(files):
    d, x, _, _ = files
    ds = ImageFolderDataset(d / "folder", "imagenet", expected_shape=(3, 224, 224))
    got = np.stack([ds[i][0] for i in range(len(ds))])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, x)


def test_cli_run_on_folder_gives_the_direct_fp32_accuracy(files, tmp_path, capsys):
    d, x, y, logits = files
    direct_accuracy = float(np.mean(logits.argmax(1) == y))
    assert direct_accuracy == pytest.approx(4 / 6) and len(set(logits.argmax(1))) == 3
    code = main(["run", HW, "resnet18", "--weights", str(d / "r18.pth"), "--data", str(d / "folder"),
                 "--preprocess", "imagenet", "--timing", "analytic", "--batch-size", "4", "--out", str(tmp_path)])
    assert code == 0
    assert "6 samples" in capsys.readouterr().out
    summary = pd.read_csv(next(tmp_path.glob("*_summary.csv")))
    assert summary.accuracy_fp32[0] == direct_accuracy


def test_folder_and_arrays_give_identical_results_serial_and_sharded(files):
    """The folder streamed through the DataLoader equals the test's own arrays; 2 worker processes equal serial."""
    from tersim.frontend import import_model
    from tersim.pipeline import run

    d, x, y, _ = files
    graph = import_model("resnet18", weights=d / "r18.pth")  # lowered once for the three runs
    options = dict(timing="analytic", batch_size=2)
    on_folder = run(HW, graph, data=d / "folder", preprocess="imagenet", **options).summary
    on_arrays = run(HW, graph, data=(x, y), **options).summary
    sharded = run(HW, graph, data=d / "folder", preprocess="imagenet", jobs=2, **options)
    pd.testing.assert_frame_equal(on_folder, on_arrays)
    pd.testing.assert_frame_equal(on_folder, sharded.summary)
    assert sharded.layers.overflow_events.sum() == on_folder.overflow_events[0]


def test_cli_verify_on_folder_is_bit_identical(files, capsys):
    d = files[0]
    code = main(["verify", HW, "resnet18", "--weights", str(d / "r18.pth"), "--data", str(d / "folder"),
                 "--limit", "1", "--loader-workers", "0"])
    assert code == 0, capsys.readouterr().out
    assert "PASS: every node is bit-identical" in capsys.readouterr().out


# --- weights files ------------------------------------------------------------------------------------------
def _write_safetensors(path, tensors: dict) -> None:
    """The safetensors layout written by hand (u64 header length, JSON table, raw little-endian bytes)."""
    header, blobs, offset = {}, [], 0
    for key, t in tensors.items():
        raw = t.contiguous().numpy().astype("<f4").tobytes()
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_safetensors_and_wrapped_state_dicts_read_the_same(files, tmp_path):
    d = files[0]
    state = torch.load(d / "r18.pth", weights_only=True)
    floats = {k: v for k, v in state.items() if v.dtype == torch.float32}
    _write_safetensors(tmp_path / "r18.safetensors", floats)
    read = read_state_dict(tmp_path / "r18.safetensors")
    assert read.keys() == floats.keys() and all(torch.equal(read[k], floats[k]) for k in floats)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, tmp_path / "ckpt.pth")
    wrapped = read_state_dict(tmp_path / "ckpt.pth")
    assert wrapped.keys() == state.keys()


@pytest.mark.parametrize("damage, named", [
    (lambda s: s.pop("layer3.1.bn2.running_var"), "1 missing key(s): layer3.1.bn2.running_var"),
    (lambda s: s.update({"head.weight": torch.zeros(3)}), "1 unexpected key(s): head.weight"),
    (lambda s: s.update({"fc.weight": torch.zeros(10, 512)}), "fc.weight (10, 512) != (1000, 512)"),
])
def test_wrong_weights_are_one_line_naming_the_keys_exit_2(files, tmp_path, capsys, damage, named):
    state = torch.load(files[0] / "r18.pth", weights_only=True)
    damage(state)
    torch.save(state, tmp_path / "bad.pth")
    code = main(["run", HW, "resnet18", "--weights", str(tmp_path / "bad.pth"), "--timing", "analytic",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    assert "resnet18" in err and not (tmp_path / "out").exists()


def test_weights_refuse_pickled_objects_and_model_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"fc.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ModelLoadError, match="weights_only"):
        read_state_dict(tmp_path / "evil.pth")
    from tersim.frontend import import_model

    with pytest.raises(ModelLoadError, match="zoo architecture name"):
        import_model("examples/digits_resnet.pt2", weights=tmp_path / "evil.pth")


# --- folders: bad input, class maps, preprocessing recipes ----------------------------------------------------
def test_class_map_orders_classes_and_rejects_unknown_folders(files, tmp_path):
    d = files[0]
    (tmp_path / "wnids.txt").write_text("class_c third\nclass_a first\nclass_b second\nunused\n")
    samples, classes = scan_folder(d / "folder", tmp_path / "wnids.txt")
    assert classes[:3] == ["class_c", "class_a", "class_b"]
    assert [label for _, label in samples] == [0, 0, 1, 1, 2, 2]  # class_c's images come first
    assert "class_c/" in samples[0][0]
    (tmp_path / "short.txt").write_text("class_a\nclass_b\n")
    with pytest.raises(DataError, match="class_c: class folder not in the class map"):
        scan_folder(d / "folder", tmp_path / "short.txt")


def test_bad_folders_and_images_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="without class sub-folders"):
        scan_folder(tmp_path / "empty")
    bad = tmp_path / "bad" / "cat"
    bad.mkdir(parents=True)
    (bad / "broken.png").write_bytes(b"not a png")
    code = main(["run", HW, "examples/digits_resnet.pt2", "--data", str(tmp_path / "bad"), "--preprocess",
                 "resize=8,8", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.png: cannot decode image" in err, err
    assert not (tmp_path / "out").exists()
    for text in ("resize=0,4", "resize=4", "bicubic"):
        with pytest.raises(DataError, match="--preprocess"):
            parse_preprocess(text)


def test_resize_and_none_recipes(tmp_path):
    folder = tmp_path / "f" / "only"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(1).integers(0, 256, (8, 8)).astype(np.uint8)
    Image.fromarray(pixels, "L").save(folder / "a.png")
    Image.fromarray(np.zeros((5, 9), np.uint8), "L").save(folder / "b.png")
    resized = ImageFolderDataset(tmp_path / "f", "resize=4,6", expected_shape=(1, 4, 6))
    x, label = resized[0]
    expected = np.asarray(Image.fromarray(pixels, "L").resize((6, 4), Image.BILINEAR), np.float32) / 255
    assert label == 0 and x.shape == (1, 4, 6)
    np.testing.assert_array_equal(x[0], expected)
    plain = ImageFolderDataset(tmp_path / "f", "none", expected_shape=(1, 8, 8))
    np.testing.assert_array_equal(plain[0][0][0], pixels.astype(np.float32) / 255)
    with pytest.raises(DataError, match="b.png: image is"):
        plain[1]


def test_python_api_takes_datasets_and_dataloaders_like_arrays():
    import tersim
    from tersim.data import load_dataset

    x, y = load_dataset("examples/digits_test.npz")
    x, y = x[:40], y[:40]
    tensors = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    common = dict(timing="analytic", batch_size=16, group_size=4)
    expected = tersim.run(HW, "examples/digits_resnet.pt2", data=(x, y), **common).summary
    for data in (tensors, torch.utils.data.DataLoader(tensors, batch_size=16)):
        got = tersim.run(HW, "examples/digits_resnet.pt2", data=data, **common).summary
        pd.testing.assert_frame_equal(got, expected)
    class Unlabelled(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return torch.from_numpy(x[i])

    got = tersim.run(HW, "examples/digits_resnet.pt2", data=Unlabelled(), **common).summary
    assert not got.labelled[0] and "accuracy_fp32" not in got and got.top1_agreement[0] == expected.top1_agreement[0]


def test_calib_folder_serves_bn_reestimate_like_arrays_and_is_refused_as_the_data(tmp_path, capsys):
    """One `calib` for both uses: an image folder (decoded values equal to arrays) gives the activation-range
    batches and bn_reestimate's statistics exactly as the same arrays do; the report names the folder; the
    evaluation folder itself is refused as calibration data."""
    from tersim.pipeline import prepare, run

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (2, 20, 8, 8)).astype(np.uint8)
    for c in range(2):
        (tmp_path / "calib" / f"c{c}").mkdir(parents=True)
        for i in range(20):
            Image.fromarray(pixels[c, i], "L").save(tmp_path / "calib" / f"c{c}" / f"{i:02d}.png")
    arrays = (pixels.reshape(40, 1, 8, 8).astype(np.float32) / 255, None)  # sorted folders, sorted files
    common = dict(data="examples/digits_test.npz", limit=24, timing="analytic", batch_size=8, group_size=4,
                  correction="bn_reestimate", loader_workers=0)
    model = "examples/digits_resnet.pt2"
    on_folder = run(HW, model, calib=tmp_path / "calib", preprocess="none", **common).summary
    on_arrays = run(HW, model, calib=arrays, **common).summary
    assert on_folder.calibration_split[0] == "calib"
    assert on_arrays.calibration_split[0] == "in-memory calibration inputs"
    pd.testing.assert_frame_equal(on_folder.drop(columns="calibration_split"),
                                  on_arrays.drop(columns="calibration_split"))
    # activation ranges come from `calib`, not from the evaluation data (input format of the first layer)
    with_calib = prepare(HW, model, calib=arrays, **{**common, "correction": "none"}).qgraph
    scaled = prepare(HW, model, calib=(arrays[0] * 8, None), **{**common, "correction": "none"}).qgraph
    name = with_calib.graph.input.name
    assert with_calib.layers[name].out.frac == scaled.layers[name].out.frac + 3
    with pytest.raises(DataError, match="the calibration data is the evaluation data"):
        prepare(HW, model, **{**common, "data": tmp_path / "calib", "calib": tmp_path / "calib", "preprocess": "none",
                              "limit": None})
