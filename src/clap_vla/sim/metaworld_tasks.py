"""Language for the 50 Meta-World v3 tasks, written for clap-vla: one instruction per task and the
phrases the per-frame subtask text is built from. Pure data: importing this needs no simulator.

Each task's expert goes through up to three phases (decided online by
`clap_vla.sim.metaworld.MetaWorldExpert`): `reach the {target}` -> `grasp the {target}` (only when the
expert closes its gripper on something) -> `{manipulate}`. Reaching tasks have a single phase.
"""

from __future__ import annotations

from typing import NamedTuple


class TaskText(NamedTuple):
    instruction: str  # the episode's task string
    target: str  # what the hand goes to first ("the drawer handle" -> "reach the drawer handle")
    manipulate: str  # the subtask after contact / grasp


# fmt: off
TASK_TEXT: dict[str, TaskText] = {
    "assembly-v3": TaskText("put the ring on the peg", "ring handle", "place the ring over the peg"),
    "basketball-v3": TaskText("dunk the ball into the basket", "ball", "carry the ball into the hoop"),
    "bin-picking-v3": TaskText("move the cube from the red bin to the blue bin", "cube",
                               "carry the cube into the blue bin"),
    "box-close-v3": TaskText("close the box with its lid", "lid", "put the lid on the box"),
    "button-press-topdown-v3": TaskText("press the button from the top", "button", "press the button down"),
    "button-press-topdown-wall-v3": TaskText("press the button behind the wall from the top", "button",
                                             "press the button down"),
    "button-press-v3": TaskText("press the button from the front", "button", "push the button in"),
    "button-press-wall-v3": TaskText("press the button behind the wall from the front", "button",
                                     "push the button in"),
    "coffee-button-v3": TaskText("press the button on the coffee machine", "coffee machine button",
                                 "push the button in"),
    "coffee-pull-v3": TaskText("pull the mug away from the coffee machine", "mug", "pull the mug back"),
    "coffee-push-v3": TaskText("push the mug under the coffee machine", "mug", "slide the mug under the spout"),
    "dial-turn-v3": TaskText("turn the dial", "dial", "rotate the dial"),
    "disassemble-v3": TaskText("take the ring off the peg", "ring handle", "lift the ring off the peg"),
    "door-close-v3": TaskText("close the door", "door", "swing the door shut"),
    "door-lock-v3": TaskText("lock the door by turning the lock", "door lock", "turn the lock down"),
    "door-open-v3": TaskText("open the door", "door handle", "pull the door open"),
    "door-unlock-v3": TaskText("unlock the door by turning the lock", "door lock", "turn the lock up"),
    "hand-insert-v3": TaskText("put the puck into the hole", "puck", "slide the puck into the hole"),
    "drawer-close-v3": TaskText("close the drawer", "drawer", "push the drawer shut"),
    "drawer-open-v3": TaskText("open the drawer", "drawer handle", "pull the drawer open"),
    "faucet-open-v3": TaskText("turn the faucet on", "faucet handle", "rotate the handle to the left"),
    "faucet-close-v3": TaskText("turn the faucet off", "faucet handle", "rotate the handle to the right"),
    "hammer-v3": TaskText("hammer the nail into the wall", "hammer", "strike the nail with the hammer"),
    "handle-press-side-v3": TaskText("press the handle down from the side", "handle", "push the handle down"),
    "handle-press-v3": TaskText("press the handle down", "handle", "push the handle down"),
    "handle-pull-side-v3": TaskText("pull the handle up from the side", "handle", "pull the handle up"),
    "handle-pull-v3": TaskText("pull the handle up", "handle", "pull the handle up"),
    "lever-pull-v3": TaskText("pull the lever up", "lever", "raise the lever"),
    "pick-place-wall-v3": TaskText("pick up the puck and place it at the goal behind the wall", "puck",
                                   "carry the puck over the wall to the goal"),
    "pick-out-of-hole-v3": TaskText("pick the peg out of the hole", "peg", "lift the peg to the goal"),
    "pick-place-v3": TaskText("pick up the puck and place it at the goal", "puck", "carry the puck to the goal"),
    "plate-slide-v3": TaskText("slide the plate into the cabinet", "plate", "push the plate into the cabinet"),
    "plate-slide-side-v3": TaskText("slide the plate sideways into the cabinet", "plate",
                                    "push the plate sideways into the cabinet"),
    "plate-slide-back-v3": TaskText("slide the plate out of the cabinet", "plate",
                                    "pull the plate out of the cabinet"),
    "plate-slide-back-side-v3": TaskText("slide the plate sideways out of the cabinet", "plate",
                                         "pull the plate sideways out of the cabinet"),
    "peg-insert-side-v3": TaskText("insert the peg into the hole from the side", "peg",
                                   "push the peg into the hole"),
    "peg-unplug-side-v3": TaskText("unplug the peg from the side", "peg", "pull the peg out"),
    "soccer-v3": TaskText("kick the ball into the goal", "ball", "push the ball into the goal"),
    "stick-push-v3": TaskText("use the stick to push the thermos", "stick", "push the thermos with the stick"),
    "stick-pull-v3": TaskText("use the stick to pull the thermos", "stick", "pull the thermos with the stick"),
    "push-v3": TaskText("push the puck to the goal", "puck", "push the puck to the goal"),
    "push-wall-v3": TaskText("push the puck around the wall to the goal", "puck",
                             "push the puck around the wall"),
    "push-back-v3": TaskText("push the puck back to the goal", "puck", "pull the puck back to the goal"),
    "reach-v3": TaskText("reach the goal position", "goal position", "reach the goal position"),
    "reach-wall-v3": TaskText("reach over the wall to the goal position", "goal position",
                              "reach over the wall to the goal position"),
    "shelf-place-v3": TaskText("put the block on the shelf", "block", "carry the block onto the shelf"),
    "sweep-into-v3": TaskText("sweep the puck into the hole", "puck", "sweep the puck into the hole"),
    "sweep-v3": TaskText("sweep the puck off the table", "puck", "sweep the puck off the edge"),
    "window-open-v3": TaskText("slide the window open", "window handle", "slide the window open"),
    "window-close-v3": TaskText("slide the window closed", "window handle", "slide the window closed"),
}
# fmt: on

# Meta-World's own task sets (metaworld.env_dict.MT10_V3; MT50 is every v3 task).
MT10 = (
    "reach-v3",
    "push-v3",
    "pick-place-v3",
    "door-open-v3",
    "drawer-open-v3",
    "drawer-close-v3",
    "button-press-topdown-v3",
    "peg-insert-side-v3",
    "window-open-v3",
    "window-close-v3",
)
MT50 = tuple(TASK_TEXT)
TASK_SETS = {"mt10": MT10, "mt50": MT50}
REACH_ONLY = frozenset({"reach-v3", "reach-wall-v3"})
