"""Data fixtures: the shared real datasets (read in place, skipped when absent) and a synthetic KuaiRec folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "CTRSINK_DATA_DIR"


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled sample log prepared once per test session; tests read it and write their outputs elsewhere."""
    from ctrsink.data import prepare

    out = tmp_path_factory.mktemp("sample") / "data"
    prepare("csv", REPO / "sample_data" / "synthetic", out)
    return out


@pytest.fixture
def one_thread():
    """Tiny models: a second intra-op thread only fights the machine's other jobs (many times slower under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets folder ($CTRSINK_DATA_DIR, default <repo>/../shared/data); skips when absent."""
    folder = Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))
    if not folder.is_dir():
        pytest.skip(f"real datasets not found at {folder} (set {DATA_ENV})")
    return folder


# Synthetic side-table rows in the official schema; 1378 is written broken (unquoted line break) like the
# real file, 10727 has no names at all, 42 has a long caption and no cover text.
KUAIREC_VIDEOS = {
    3650: ("小猫钓鱼", "今天去河边 #钓鱼", "[钓鱼]", "体育", "户外运动", "UNKNOWN"),
    1378: ("UNKNOWN", "张教练：我们开始\r吧！", "[]", "明星娱乐", "UNKNOWN", "UNKNOWN"),
    42: ("UNKNOWN", "很长的标题" * 20, "[a,b]", "美食", "美食教程", "家常菜"),
    10727: ("UNKNOWN", "", "[]", "UNKNOWN", "UNKNOWN", "UNKNOWN"),
    7: ("封面", "短", "[]", "颜值", "颜值随拍", "UNKNOWN"),
    500: ("UNKNOWN", "第五百", "[]", "游戏", "UNKNOWN", "UNKNOWN"),
}
CAPTION_HEADER = (
    "video_id,manual_cover_text,caption,topic_tag,first_level_category_id,first_level_category_name,"
    "second_level_category_id,second_level_category_name,third_level_category_id,third_level_category_name"
)
KUAIREC_START = 1593878903.438  # 2020-07-05 00:08:23.438 Beijing time


def write_kuairec_matrix(path: Path, videos: list[int], seed: int = 0) -> pd.DataFrame:
    """A small interaction matrix in the official schema: several days, ratios above 1 and 2, short users,
    two rows without `timestamp` (one recoverable from `time`, one not)."""
    rng = np.random.default_rng(seed)
    rows = []
    lengths = [30, 25, 20, 12, 8, 5, 3, 2, 1]  # the last users have short histories
    for user, length in enumerate(lengths):
        ts = np.sort(KUAIREC_START + rng.uniform(0, 5 * 86400, size=length)).round(3)
        for t in ts:
            video_duration = int(rng.integers(5_000, 60_000))
            ratio = float(rng.choice([0.3, 0.9, 1.27, 2.5, 3.1]) * rng.uniform(0.9, 1.1))
            rows.append(
                (user, int(rng.choice(videos)), int(video_duration * ratio), video_duration, t, ratio)
            )
    df = pd.DataFrame(
        rows, columns=["user_id", "video_id", "play_duration", "video_duration", "timestamp", "r"]
    )
    wall = pd.to_datetime(df["timestamp"], unit="s") + pd.Timedelta(hours=8)
    df.insert(4, "time", wall.dt.strftime("%Y-%m-%d %H:%M:%S.%f").str[:-3])
    df.insert(5, "date", wall.dt.strftime("%Y%m%d").astype(np.int64))
    df["watch_ratio"] = df.pop("r")
    df.loc[[3, 4], "video_id"] = videos[0]  # keep both rows below on a video of the synthetic side table
    df.loc[3, "timestamp"] = np.nan  # recoverable from `time`
    df.loc[4, ["timestamp", "time"]] = np.nan  # not recoverable: dropped
    df.to_csv(path, index=False)
    return df


@pytest.fixture
def kuairec_dir(tmp_path: Path) -> Path:
    """A folder with small_matrix.csv, kuairec_caption_category.csv (one broken row) and item_categories.csv."""
    folder = tmp_path / "kuairec"
    folder.mkdir()
    lines = [CAPTION_HEADER]
    for vid, (cover, caption, tag, c1, c2, c3) in KUAIREC_VIDEOS.items():
        quoted_tag = f'"{tag}"' if "," in tag else tag
        lines.append(f"{vid},{cover},{caption},{quoted_tag},1,{c1},2,{c2},-124,{c3}")
    (folder / "kuairec_caption_category.csv").write_bytes(("\n".join(lines) + "\n").encode("utf-8"))
    cats = "video_id,feat\n" + "".join(f'{vid},"[{vid % 30}, 9]"\n' for vid in KUAIREC_VIDEOS)
    (folder / "item_categories.csv").write_text(cats, encoding="utf-8")
    # 1, 2000 and 9999 are real KuaiRec ids missing from the synthetic side table (dropped unless the real one is used).
    write_kuairec_matrix(folder / "small_matrix.csv", [*sorted(KUAIREC_VIDEOS), 1, 2000, 9999])
    return folder
