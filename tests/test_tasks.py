"""Tasks: prompts name the actions and the answer format, messages carry the frame, the registry explains itself."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from vlm_env_ppo.actions import ParsedAction
from vlm_env_ppo.tasks import TASKS, Task, UnknownEnvError, get_task, register_task, to_pil_image

ENV_IDS = ["gym_cards/NumberLine-v0", "gym_cards/EZPoints-v0", "gym_cards/Points24-v0", "gym_cards/Blackjack-v0"]
INFOS = {
    "gym_cards/NumberLine-v0": {"Target": 3, "Current": 1},
    "gym_cards/EZPoints-v0": {"Cards": ["K", "2"], "Numbers": [10, 2], "Formula": ["10", "+"], "formula_text": "10 +"},
    "gym_cards/Points24-v0": {"Cards": ["4", "6", "A", "2"], "Numbers": [4, 6, 1, 2], "Formula": ["(", "4"]},
    "gym_cards/Blackjack-v0": {"player_cards": [10, 5], "dealer_card": 7, "player_sum": 15, "usable_ace": False},
}


def test_builtin_tasks_match_the_env_contract():
    assert {*ENV_IDS, "vlm_env_ppo/ColorChoice-v0", "FrozenLake-v1", "MiniGrid-Empty-5x5-v0"} <= set(TASKS)
    from vlm_env_ppo.envs.adapter import make_env

    for env_id, task in TASKS.items():  # one name per env action, in the env's index order
        if task.action_names is None:  # text games: commands from each step's info (tests/test_text_envs.py)
            assert env_id in ("vlm_env_ppo/TextWorld-v0", "vlm_env_ppo/ALFWorld-v0")
            assert task.legal_actions({"admissible_commands": ["look", "go north"]}) == ("look", "go north")
            continue
        env = make_env(env_id)
        assert len(task.action_names) == env.action_space.n, env_id
        env.close()
    numbers = tuple(str(i) for i in range(1, 11))
    assert get_task("gym_cards/NumberLine-v0").action_names == ("-", "+")
    assert get_task("gym_cards/EZPoints-v0").action_names == numbers + ("+", "*", "=")
    assert get_task("gym_cards/Points24-v0").action_names == numbers + ("+", "-", "*", "/", "(", ")", "=")
    assert get_task("gym_cards/Blackjack-v0").action_names == ("stand", "hit")


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_messages_structure(env_id):
    task = get_task(env_id)
    frame = np.random.default_rng(0).integers(0, 256, size=(200, 300, 3), dtype=np.uint8)
    messages = task.build_messages(frame, INFOS[env_id])
    assert len(messages) == 1 and messages[0]["role"] == "user"
    image_part, text_part = messages[0]["content"]
    assert image_part["type"] == "image" and text_part["type"] == "text"
    image = image_part["image"]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (300, 200)
    np.testing.assert_array_equal(np.asarray(image), frame)
    text = text_part["text"]
    assert json.dumps(list(task.action_names)) in text  # every legal action, quoted
    assert '"thoughts"' in text and '"action"' in text
    assert text.index('"thoughts"') < text.index('"action"')  # reasoning first, action last


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_action_only_prompt_does_not_ask_for_thoughts(env_id):
    task = get_task(env_id)
    text = task.prompt(INFOS[env_id], action_only=True)
    assert "thought" not in text.lower() and "reason" not in text.lower()
    assert '{"action": ' in text
    assert json.dumps(list(task.action_names)) in text


def test_points_prompts_show_the_formula():
    assert "10 +" in get_task("gym_cards/EZPoints-v0").prompt(INFOS["gym_cards/EZPoints-v0"])
    assert "( 4" in get_task("gym_cards/Points24-v0").prompt(INFOS["gym_cards/Points24-v0"], action_only=True)
    assert "formula is empty" in get_task("gym_cards/Points24-v0").prompt({"Formula": []})
    assert "formula is empty" in get_task("gym_cards/Points24-v0").prompt(None)  # reset info may be missing


def test_builtin_prompts_open_like_the_paper():
    assert get_task("gym_cards/NumberLine-v0").prompt({}).startswith(
        "You are playing a game called number line. You will see a target number and a current number in the image."
    )
    assert get_task("gym_cards/Blackjack-v0").prompt({}).startswith("You are a blackjack player.")


@pytest.mark.parametrize("observation", [None, "not an image", np.zeros(5), np.zeros((2, 2, 7)), {"image": 1}])
def test_non_image_observation_gives_text_only_message(observation):
    messages = get_task("gym_cards/NumberLine-v0").build_messages(observation, {})
    assert [part["type"] for part in messages[0]["content"]] == ["text"]


def test_to_pil_image_accepts_common_frames():
    assert to_pil_image(np.zeros((4, 5), np.uint8)).size == (5, 4)
    assert to_pil_image(np.zeros((4, 5, 4), np.uint8)).mode == "RGB"
    assert np.asarray(to_pil_image(np.ones((4, 5, 3), np.float32)))[0, 0, 0] == 255  # floats in [0, 1] are scaled
    assert to_pil_image(Image.new("L", (3, 2))).mode == "RGB"


def test_example_answer_format():
    task = get_task("gym_cards/Blackjack-v0")
    assert task.example_answer("hit", thoughts="15 against a 7: hit.") == (
        '{"thoughts": "15 against a 7: hit.", "action": "hit"}'
    )
    assert task.example_answer(0, action_only=True) == '{"action": "stand"}'
    assert json.loads(task.example_answer("stand", thoughts='He said "hit"\n')) == {
        "thoughts": 'He said "hit"\n',
        "action": "stand",
    }
    assert task.parse_action(task.example_answer("stand", thoughts='He said "hit"\n')).action == 0
    with pytest.raises(ValueError, match="legal actions"):
        task.example_answer("double")
    with pytest.raises(ValueError, match="out of range"):
        task.example_answer(2)


def test_task_parse_action_delegates():
    task = get_task("gym_cards/Points24-v0")
    assert task.parse_action('{"action": "10"}', INFOS["gym_cards/Points24-v0"]) == ParsedAction(9, True, 1, "ok")
    assert not task.parse_action("no answer").valid


def test_get_task_error_is_informative():
    with pytest.raises(KeyError) as excinfo:  # a registered env without a task
        get_task("CliffWalking-v1")
    message = str(excinfo.value)
    assert "CliffWalking-v1" in message
    assert all(env_id in message for env_id in ENV_IDS)
    assert "Task(" in message and "register_task" in message and "parse_action" in message
    with pytest.raises(UnknownEnvError, match=r"No such env 'gym_cards/NumberLine-v1'.*provides .*v0"):  # a typo
        get_task("gym_cards/NumberLine-v1")


def test_custom_task_with_default_template_and_registration():
    task = Task(
        "MyMaze-v0",
        ["turn left", "left", "right"],
        "You are in a maze. Find the exit.",
        info_text=lambda info: f"Steps left: {info.get('steps_left', '?')}.",
    )
    assert task.action_names == ("turn left", "left", "right")
    text = task.prompt({"steps_left": 3})
    assert "Find the exit." in text and "Steps left: 3." in text and '"turn left", "left", "right"' in text
    for index, name in enumerate(task.action_names):
        assert task.parse_action(task.example_answer(name, thoughts="go")).action == index
    try:
        assert register_task(task) is task and get_task("MyMaze-v0") is task
    finally:
        TASKS.pop("MyMaze-v0", None)


def test_replace_keeps_a_task_valid():
    task = dataclasses.replace(get_task("gym_cards/Blackjack-v0"), description="Play blackjack.")
    assert task.prompt({}).startswith("Play blackjack.")
    assert task.parse_action('{"action": "stand"}').action == 0


@pytest.mark.parametrize("names", [[], ["a", "a"], ["a", ""], "ab", ["a", 1]])
def test_bad_action_names_are_rejected(names):
    with pytest.raises(ValueError, match="action_names"):
        Task("X-v0", names, "x")


def test_register_task_rejects_non_tasks():
    with pytest.raises(TypeError):
        register_task("gym_cards/NumberLine-v0")
