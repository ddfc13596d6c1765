"""Write the committed pickle of this fastcells' pickle format, and the values it must give.

    PYTHONPATH=. python tests/data/pickles/make_pickles.py    (from the repository's root)

writes ``format<N>.pkl`` (N: ``fastcells._pickle.PICKLE_FORMAT``) and
``format<N>_expected.npz`` beside this file.  The pickle holds, in one call:
a 2-layer LSTM (H=8) with a Linear head, an Adam over both after two steps
(so its moments and step counts are not trivial), a GRU Stepper, and from format 2
on an LSTM Stepper with projection (``W_hr``, P=3) and a projected LSTM layer.  The
``.npz`` (plain arrays, no pickle) holds their weights, inputs and outputs.
tests/test_pickle.py loads every ``format*.pkl`` here: pickles written by one
version must load in the next.  Run this script when ``PICKLE_FORMAT``
changes (a new pair of files; keep the old ones), never to update an old pair.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

import fastcells
from fastcells._pickle import PICKLE_FORMAT

HERE = Path(__file__).resolve().parent
SEED = 14
#: sequence length, batch, input size, hidden size, outputs of the head
T, B, I, H, OUT = 5, 3, 3, 8, 2
#: the projection of the format-2 objects
P = 3


def model_outputs(lstm: fastcells.LSTM, head: fastcells.Linear, x: np.ndarray) -> np.ndarray:
    """The head over the LSTM's outputs (eval mode: no dropout, nothing kept)."""
    y, _ = lstm.eval()(x)
    out: np.ndarray = head.eval()(y)
    return out


def train_step(lstm: fastcells.LSTM, head: fastcells.Linear, adam: fastcells.optim.Adam,
               x: np.ndarray, dout: np.ndarray) -> None:
    """One step of training: forward, backward of ``sum(out * dout)``, Adam's update."""
    adam.zero_grad()
    lstm.train()
    head.train()
    y, _ = lstm(x)
    head(y)
    lstm.backward(head.backward(dout))
    adam.step()


def stepper_outputs(stepper: fastcells.Stepper, xs: np.ndarray) -> np.ndarray:
    """The hidden states of a Stepper (GRU, or LSTM) over the steps of ``xs`` (T, B, I),
    stacked."""
    state: tuple[np.ndarray, ...] = ()
    hs = []
    for x_t in xs:
        out = stepper(x_t, *state)
        state = out if isinstance(out, tuple) else (out,)
        hs.append(state[0])
    return np.stack(hs)


def main() -> None:
    rng = np.random.default_rng(SEED)
    lstm = fastcells.LSTM(I, H, num_layers=2, seed=SEED)
    head = fastcells.Linear(H, OUT, seed=SEED + 1)
    adam = fastcells.optim.Adam([lstm, head], lr=1e-2)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dout = rng.standard_normal((T, B, OUT)).astype(np.float32)
    for _ in range(2):
        train_step(lstm, head, adam, x, dout)
    G = 3
    gru = {"W_ih": rng.uniform(-0.5, 0.5, (G * H, I)), "W_hh": rng.uniform(-0.5, 0.5, (G * H, H)),
           "b_ih": rng.uniform(-0.5, 0.5, G * H), "b_hh": rng.uniform(-0.5, 0.5, G * H)}
    gru = {k: v.astype(np.float32) for k, v in gru.items()}
    stepper = fastcells.Stepper("gru", gru["W_ih"], gru["W_hh"], gru["b_ih"], gru["b_hh"])
    proj = {"W_ih": rng.uniform(-0.5, 0.5, (4 * H, I)), "W_hh": rng.uniform(-0.5, 0.5, (4 * H, P)),
            "W_hr": rng.uniform(-0.5, 0.5, (P, H))}
    proj = {k: v.astype(np.float32) for k, v in proj.items()}
    proj_stepper = fastcells.Stepper("lstm", proj["W_ih"], proj["W_hh"], W_hr=proj["W_hr"])
    proj_lstm = fastcells.LSTM(I, H, proj_size=P, seed=SEED + 2).eval()
    expected = {f"lstm.{k}": v for k, v in lstm.state_dict().items()}
    expected |= {f"head.{k}": v for k, v in head.state_dict().items()}
    expected |= {f"gru.{k}": v for k, v in gru.items()}
    expected |= {f"proj.{k}": v for k, v in proj.items()}
    expected |= {f"proj_lstm.{k}": v for k, v in proj_lstm.state_dict().items()}
    expected |= {"x": x, "dout": dout, "out": model_outputs(lstm, head, x),
                 "steps": stepper_outputs(stepper, x),
                 "proj_steps": stepper_outputs(proj_stepper, x), "proj_y": proj_lstm(x)[0]}
    lstm.train()
    head.train()
    with open(HERE / f"format{PICKLE_FORMAT}.pkl", "wb") as f:
        # protocol 4: NumPy 1.26 cannot load NumPy 2's protocol-5 arrays (numpy#28340)
        pickle.dump({"lstm": lstm, "head": head, "adam": adam, "stepper": stepper,
                     "proj_stepper": proj_stepper, "proj_lstm": proj_lstm}, f, protocol=4)
    # after the pickle: the weights one more training step gives (Adam's state at work)
    train_step(lstm, head, adam, x, dout)
    expected |= {f"trained.lstm.{k}": v for k, v in lstm.state_dict().items()}
    expected |= {f"trained.head.{k}": v for k, v in head.state_dict().items()}
    np.savez(HERE / f"format{PICKLE_FORMAT}_expected.npz", **expected)


if __name__ == "__main__":
    main()
