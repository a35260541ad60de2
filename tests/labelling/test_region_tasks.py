"""Region tasks: push crops of selected cells, annotate them, pull -> photo pixels + reviewed area.

Against the real Label Studio server of the session (``ls_server``), like ``test_push_pull.py``.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_push_pull import close, fake_predictions, make_params, polygon

from cardamage.data.dataset import load_dataset
from cardamage.data.dedup import file_sha256
from cardamage.data.images import image_size
from cardamage.data.reviewed import IGNORE_INDEX
from cardamage.labelling.ledger import LABELLED, load_ledger
from cardamage.labelling.pull import pull_project
from cardamage.labelling.push import push_selection
from cardamage.labelling.regions import REGION_KEY, crop_box, region_key

pytestmark = pytest.mark.slow


def _selection(path: Path, rows: list[tuple[Path, tuple[int, int, int, int]]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "path", "score", "rank", "strategy", "reason", "cell", "region"])
        for rank, (photo, box) in enumerate(rows, 1):
            writer.writerow([file_sha256(photo), str(photo), round(1 - rank / 10, 2), rank, "entropy", "test", 0,
                             ",".join(str(v) for v in box)])
    return path


def _tasks(client, project_id: int) -> dict[str, tuple[int, dict]]:
    return {data["cardamage_id"]: (task_id, data) for task_id, data in client.list_task_data(project_id)}


def test_region_tasks_push_crops_and_pull_back_into_the_photo(ls_client, ls_photos, tmp_path, caplog):
    params = make_params(tmp_path)
    params.labelstudio.crops_dir = str(tmp_path / "crops")
    photo11, photo12, _ = ls_photos
    w11, h11 = image_size(photo11)
    cells = [(photo11, (0, 0, w11 // 4, h11 // 4)), (photo11, (w11 // 2, h11 // 2, w11 // 4, h11 // 4)),
             (photo12, (0, 0, 100, 100))]
    selection = _selection(tmp_path / "selection.csv", cells)
    summary = push_selection(selection, params, client=ls_client, predictions=fake_predictions([photo11, photo12]),
                             model_version="test-model")
    assert (summary.pushed, summary.with_predictions) == (3, 3)
    tasks = _tasks(ls_client, summary.project_id)
    boxes = [crop_box(cell, *image_size(photo), 0.25) for photo, cell in cells]
    keys = [region_key(file_sha256(photo), box) for (photo, _), box in zip(cells, boxes)]
    assert sorted(tasks) == sorted(keys)
    info = tasks[keys[0]][1][REGION_KEY]
    assert info["crop_box"] == list(boxes[0]) and info["cell"] == list(cells[0][1])
    assert info["photo_id"] == file_sha256(photo11) and (info["photo_width"], info["photo_height"]) == (w11, h11)
    crop = sorted(Path(params.labelstudio.crops_dir).glob("11_*.jpg"))[0]
    assert Image.open(crop).size in {tuple(b[2:]) for b in boxes[:2]}, "the task image is the crop"

    predictions = {p["task"]: p for p in ls_client.list_predictions(summary.project_id)}
    # the top-left crop (0-31 % of the photo): the model's triangle (20-50 % x, 20-60 % y) reaches into it
    points = predictions[tasks[keys[0]][0]]["result"][0]["value"]["points"]
    assert all(-1e-6 <= px <= 100 + 1e-6 and -1e-6 <= py <= 100 + 1e-6 for px, py in points), "clipped to the crop"
    assert min(px for px, _ in points) == pytest.approx(20 / 0.3125, abs=0.5), "shifted into the crop's pixels"
    assert not predictions[tasks[keys[1]][0]]["result"], "no predicted damage in the centre crop"

    # annotate: a square inside the first crop, one that runs past the second crop's right edge
    size0, size1 = (boxes[0][2], boxes[0][3]), (boxes[1][2], boxes[1][3])
    ls_client.create_annotation(tasks[keys[0]][0], [polygon([[10, 10], [50, 10], [50, 50], [10, 50]], size0, "r1")])
    ls_client.create_annotation(tasks[keys[1]][0], [polygon([[60, 20], [130, 20], [130, 80], [60, 80]], size1, "r2")])
    ls_client.create_annotation(tasks[keys[2]][0], [polygon([[10, 10], [90, 10], [50, 90]], (boxes[2][2], boxes[2][3]),
                                                            "r3")])
    original12 = photo12.read_bytes()
    photo12.write_bytes(original12 + b"\0")  # changed on disk since its region was pushed
    with caplog.at_level(logging.WARNING):
        pulled = pull_project(ls_client, summary.project_id, params)
    clip_warning = f"result r2: polygon points outside the {boxes[1][2]}x{boxes[1][3]} image were clipped"
    assert clip_warning in caplog.text, "drawn past the crop's edge: clipped, warned"
    assert pulled.added == 1 and any("photo changed on disk" in p and "not merged" in p for p in pulled.problems)

    labelled = Path(params.labelstudio.labelled_dir)
    [record] = load_dataset(labelled, classes=["damage"]).images
    assert (labelled / record.path).read_bytes() == photo11.read_bytes()
    assert record.reviewed == [tuple(float(v) for v in b) for b in boxes[:2]]
    first, second = (inst.polygons[0] for inst in record.instances)
    x0, y0, cw, ch = boxes[0]
    close(first, [(x0 + px * cw / 100, y0 + py * ch / 100) for px, py in [[10, 10], [50, 10], [50, 50], [10, 50]]])
    x1, y1, cw1, ch1 = boxes[1]
    assert max(px for px, _ in second) == pytest.approx(x1 + cw1), "clipped at the crop's right edge"
    assert min(px for px, _ in second) == pytest.approx(x1 + 0.6 * cw1)

    via = json.loads((labelled / "via_region_data.json").read_text())
    assert "reviewed_boxes" in next(iter(via.values()))["file_attributes"]
    coco = json.loads((Path(params.labelstudio.exports_dir) / f"project_{summary.project_id}_coco.json").read_text())
    assert coco["images"][0]["reviewed_boxes"] == [list(b) for b in boxes[:2]]
    ledger = load_ledger(params.labelstudio.ledger)
    assert ledger[keys[0]]["status"] == ledger[keys[1]]["status"] == LABELLED
    assert file_sha256(photo11) not in ledger, "the photo itself was never a task"

    from cardamage.model.inputs import fit_geometry, fit_mask

    fit = fit_geometry(w11, h11, 128)
    mask = fit_mask(record.instances, ["damage"], fit, reviewed=record.reviewed)
    share = (mask != IGNORE_INDEX).sum() / (fit.new_w * fit.new_h)
    assert 0.1 < share < 0.4 and (mask == 1).any(), "only the two crops count in training"

    photo12.write_bytes(original12)
    again = push_selection(selection, params, client=ls_client, predictions={})
    assert again.pushed == 0 and again.already_pushed == 3, "no region is pushed twice"
    repeat = pull_project(ls_client, summary.project_id, params)
    assert repeat.added == 1 and repeat.unchanged == 1, "photo 12 now matches: merged; photo 11 unchanged"


def test_a_region_task_without_its_crop_box_is_reported(ls_client, ls_project, ls_photos, tmp_path):
    params = make_params(tmp_path)
    photo = ls_photos[0]
    [url] = ls_client.upload_files(ls_project, [photo])
    data = {"image": url, "cardamage_id": "x@0,0,1,1", "cardamage_path": str(photo),
            REGION_KEY: {"photo_id": file_sha256(photo), "photo_path": str(photo)}}
    [task_id] = ls_client.import_tasks(ls_project, [{"data": data}])
    ls_client.create_annotation(task_id, [polygon([[10, 10], [50, 10], [50, 50]], image_size(photo), "q")])
    summary = pull_project(ls_client, ls_project, params)
    assert summary.added == 0
    assert any(f"task {task_id}" in p and "without a usable crop box" in p for p in summary.problems)
    assert not np.any([p.is_file() for p in Path(params.labelstudio.labelled_dir).rglob("*.jpg")])


def test_region_task_data_is_checked_against_the_photo(tmp_path):
    from cardamage.labelling.regions import photo_problem, region_info

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48), (10, 20, 30)).save(photo)
    info = {"photo_id": file_sha256(photo), "photo_path": str(photo), "photo_width": 64, "photo_height": 48,
            "crop_box": [0, 0, 32, 24]}
    good, reason = region_info({"data": {REGION_KEY: info}})
    assert reason is None and photo_problem(good) is None
    huge, _ = region_info({"data": {REGION_KEY: {**info, "photo_width": 10**9, "photo_height": 10**9}}})
    assert "the photo is 64x48; not merged" in photo_problem(huge), "a claimed size never sizes a buffer"
    for bad, why in (({**info, "crop_box": [0, 0, 100, 24]}, "beyond the 64x48 photo"),
                     ({**info, "crop_box": "0,0,1,1"}, "without a usable crop box"),
                     ({**info, "photo_id": None}, "without photo_id")):
        assert why in region_info({"data": {REGION_KEY: bad}})[1]
    assert region_info({"data": {}}) == (None, None), "a whole-photo task"


@pytest.mark.parametrize("text, why", [("1e400,0,5,5", "is not 'x,y,width,height'"), ("1,2,3", "is not"),
                                       ("0,0,0,5", "width, height > 0"), ("a,b,c,d", "is not")])
def test_a_bad_region_in_the_selection_is_refused_by_row(tmp_path, text, why):
    from cardamage.errors import BadInputError
    from cardamage.labelling.photos import read_selection

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48)).save(photo)
    csv_path = tmp_path / "selection.csv"
    csv_path.write_text(f"id,path,score,region\n,{photo},0.5,\"{text}\"\n")
    with pytest.raises(BadInputError, match=why) as err:
        read_selection(csv_path)
    assert "row 2" in str(err.value)


def test_a_cell_outside_its_photo_names_the_photo(tmp_path):
    from cardamage.config import Params
    from cardamage.errors import BadInputError
    from cardamage.labelling.photos import Photo
    from cardamage.labelling.regions import region_photos

    photo = tmp_path / "p.jpg"
    Image.new("RGB", (64, 48)).save(photo)
    params = Params()
    params.labelstudio.crops_dir = str(tmp_path / "crops")
    with pytest.raises(BadInputError, match="p.jpg: region .* outside the 64x48 photo"):
        region_photos([Photo(file_sha256(photo), photo, "p.jpg", region=(500, 500, 10, 10))], params)
    [crop] = region_photos([Photo(file_sha256(photo), photo, "p.jpg", region=(0, 0, 16, 12))], params)
    assert Image.open(crop.path).size == (20, 15) and crop.extra[REGION_KEY]["crop_box"] == [0, 0, 20, 15]
