import pytest
import yaml

from opposites import prompts
from opposites.prompts import TaskError, make_prompts

TASKS = ("ioi", "size", "antonym", "isa")


@pytest.mark.parametrize("task", TASKS)
def test_rows_are_valid(task, tokenizer):
    rows, _ = make_prompts(task, tokenizer, 48, seed=1, min_prompts=8)
    assert len(rows) == 48
    for r in rows:
        clean, corrupted = tokenizer(r["clean"])["input_ids"], tokenizer(r["corrupted"])["input_ids"]
        assert len(clean) == len(corrupted) == r["positions"]["END"]  # END counts the BOS
        assert len(tokenizer(r["answer"])["input_ids"]) == 1 and len(tokenizer(r["wrong"])["input_ids"]) == 1
        assert r["answer"].startswith(" ") and r["answer"] != r["wrong"]
        for role, pos in r["positions"].items():
            if role != "END":  # role positions point at the role's word (BOS shifts by one)
                word = tokenizer.decode([clean[pos - 1]]).strip()
                assert word in r["clean"] and word[0].isalpha()


def test_roles_hold_the_expected_words(tokenizer):
    ioi, _ = make_prompts("ioi", tokenizer, 20, seed=0, min_prompts=8)
    for r in ioi:
        ids = tokenizer(r["clean"])["input_ids"]
        name = lambda role: tokenizer.decode([ids[r["positions"][role] - 1]])  # noqa: E731
        assert name("IO") == r["answer"] and name("S1") == name("S2") == r["wrong"]
        corrupted = tokenizer(r["corrupted"])["input_ids"]
        assert tokenizer.decode([corrupted[r["positions"]["S2"] - 1]]) not in (r["answer"], r["wrong"])  # ABC
    size, _ = make_prompts("size", tokenizer, 20, seed=0, min_prompts=8)
    for r in size:  # clean ADJ1 is the wrong (repeated) token; corrupted swaps in its opposite, the answer
        at = lambda text: tokenizer.decode([tokenizer(text)["input_ids"][r["positions"]["ADJ1"] - 1]])  # noqa: E731
        assert at(r["clean"]) == r["wrong"] and at(r["corrupted"]) == r["answer"]
        assert tokenizer(r["clean"])["input_ids"][:r["positions"]["ADJ1"] - 1] == \
            tokenizer(r["corrupted"])["input_ids"][:r["positions"]["ADJ1"] - 1]


def test_same_seed_same_rows(tokenizer):
    assert make_prompts("size", tokenizer, 30, 7, 8) == make_prompts("size", tokenizer, 30, 7, 8)
    assert make_prompts("size", tokenizer, 30, 7, 8)[0] != make_prompts("size", tokenizer, 30, 8, 8)[0]


def test_unknown_task(tokenizer):
    with pytest.raises(TaskError, match="unknown task 'colour'.*antonym, ioi, isa, size"):
        make_prompts("colour", tokenizer, 8, 0, 4)


def _spec_with(monkeypatch, tmp_path, **changes):
    spec = yaml.safe_load(prompts.task_file("size").read_text()) | changes
    path = tmp_path / "size.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(prompts, "task_file", lambda task: path)


@pytest.mark.parametrize("changes,match", [
    ({"pairs": [[True, False], ["tall", "short"]]}, "two different words"),  # YAML booleans, the classic trap
    ({"pairs": [["tall", "tall"], ["big", "small"]]}, "two different words"),
    ({"pairs": [["tall", "short"]]}, "key 'pairs' has 1 entries, fewer than the 2 needed"),
    ({"unrelated": []}, "key 'unrelated' has 0 entries, fewer than the 2 needed"),
    ({"synonyms": [["big"], ["small", "little"]]}, r"key 'synonyms\.0' has 1 entries"),
    ({"names": ["John", "John", "Mary"]}, "duplicates"),
    ({"family": "colours"}, "key 'family' is invalid: 'colours' is not one of"),
    ({"templates": ["{NAME1} is nice. {NAME2} is"]}, "lacks role"),
    ({"pairs": [["big", "small"], ["large", "small"]]}, "'small' has two opposites"),
    ({"unrelated": ["tall", "blue"]}, r"unrelated adjective\(s\) \['tall'\]"),
])
def test_bad_word_lists_rejected(monkeypatch, tmp_path, tokenizer, changes, match):
    _spec_with(monkeypatch, tmp_path, **changes)
    with pytest.raises(TaskError, match=match):
        make_prompts("size", tokenizer, 8, 0, 4)


def test_multi_token_words_dropped_then_too_few_is_an_error(monkeypatch, tmp_path, tokenizer):
    _spec_with(monkeypatch, tmp_path, pairs=[["gargantuan", "minuscule"], ["humongous", "teeny"]])
    with pytest.raises(TaskError, match=r"only 0 valid prompts.*single token"):
        make_prompts("size", tokenizer, 8, 0, 4)


def test_entity_in_two_categories_rejected(monkeypatch, tmp_path, tokenizer):
    spec = yaml.safe_load(prompts.task_file("isa").read_text())
    spec["categories"]["tool"].append("apple")
    path = tmp_path / "isa.yaml"
    path.write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(prompts, "task_file", lambda task: path)
    with pytest.raises(TaskError, match="'apple' is listed under both"):
        make_prompts("isa", tokenizer, 8, 0, 4)


@pytest.mark.parametrize("task,role", [("ioi", "S2"), ("size", "ADJ1"), ("antonym", "ADJ1"), ("isa", "ENTITY")])
def test_rows_record_their_words_and_the_role_the_corruption_changes(tokenizer, task, role):
    from opposites.prompts import fill, load_spec

    rows, _ = make_prompts(task, tokenizer, 16, seed=0, min_prompts=4)
    spec = load_spec(task)
    for r in rows:
        assert r["changed"] == [role]
        assert fill(spec["templates"][r["template"]], r["words"], tokenizer, spec["roles"]) == (r["clean"], r["positions"])


def test_the_resampling_unit_is_the_source_word_of_each_family(rows):
    """Opposite: the unordered adjective pair (both orientations one cluster); category: the
    ENTITY's category; IOI: the IO name. Prompts share units, so there are fewer units than prompts."""
    from opposites.core import batch_order, prompt_clusters
    from opposites.prompts import cluster_of

    for r in rows["size"]:
        assert cluster_of(r) == "/".join(sorted((r["words"]["ADJ1"], r["answer"].strip())))
        flipped = {**r, "words": {**r["words"], "ADJ1": r["answer"].strip()}, "answer": " " + r["words"]["ADJ1"]}
        assert cluster_of(flipped) == cluster_of(r)
    assert all(cluster_of(r) == r["words"]["IO"] for r in rows["ioi"])
    spec = prompts.load_spec("isa")
    assert all(r["words"]["ENTITY"] in spec["categories"][cluster_of(r)] for r in rows["isa"])
    assert prompt_clusters(rows["size"]) == [cluster_of(r) for r in batch_order(rows["size"])]
    assert len(set(prompt_clusters(rows["size"]))) < len(rows["size"])


def test_start_up_check_names_a_multi_token_word_and_its_tokens(tokenizer, monkeypatch):
    spec = prompts.load_spec("size")
    bad = {**spec, "unrelated": spec["unrelated"] + ["flabbergasted"]}
    monkeypatch.setattr(prompts, "load_spec", lambda task: bad)
    with pytest.raises(prompts.TaskError) as e:
        prompts.check_task("size", tokenizer)
    msg = str(e.value)
    assert "src/opposites/tasks/size.yaml" in msg and "'flabbergasted'" in msg and "unrelated" in msg
    assert "[' fl', 'ab', 'berg', 'asted']" in msg


def test_start_up_check_names_a_placeholder_nothing_fills(tokenizer, monkeypatch):
    spec = prompts.load_spec("size")
    bad = {**spec, "templates": spec["templates"] + ["{NAME1} is {ADJ1} and {ADJ2}. {NAME2} is"]}
    monkeypatch.setattr(prompts, "load_spec", lambda task: bad)
    with pytest.raises(prompts.TaskError, match=r"placeholder\(s\) \['ADJ2'\] that the opposite family never fills"):
        prompts.check_task("size", tokenizer)


@pytest.mark.parametrize("task", ["ioi", "size", "antonym", "isa"])
def test_shipped_task_files_pass_the_start_up_check(tokenizer, task):
    prompts.check_task(task, tokenizer)


def test_second_corruption_changes_its_role_and_only_it(tokenizer):
    """IOI's second corruption: in every prompt the corrupted tokens differ from the clean ones at
    IO's position and nowhere else, the new IO is a name the prompt does not use, and the answer and
    wrong stay the clean prompt's."""
    rows, _ = make_prompts("ioi", tokenizer, 64, seed=0, min_prompts=8)
    alt = prompts.second_corruption(rows, "ioi", tokenizer, seed=0)
    assert len(alt) >= 0.9 * len(rows)
    names = set(prompts.load_spec("ioi")["names"])
    for r in alt:
        clean, corrupted = (prompts.token_ids(tokenizer, r[k]) for k in ("clean", "corrupted"))
        differ = [i + 1 for i, (a, b) in enumerate(zip(clean, corrupted)) if a != b]  # +1: positions count BOS
        assert len(clean) == len(corrupted) and differ == [r["positions"]["IO"]], r
        new = tokenizer.decode([corrupted[r["positions"]["IO"] - 1]]).strip()
        assert new in names and new not in r["words"].values()
        assert r["changed"] == ["IO"] and r["answer"] == " " + r["words"]["IO"]
    assert alt == prompts.second_corruption(rows, "ioi", tokenizer, seed=0)  # seeded
