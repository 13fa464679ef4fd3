"""Attacks: malicious clients for robustness studies, as pure transforms.

| concept | module | kind |
| --- | --- | --- |
| which clients are malicious (a seeded, fixed subset) | `selection.py` | program, once per run |
| `label_flip`: y -> C - 1 - y (Fang et al. 2020) | `label_flip.py` | client data |
| `sign_flip`: -s x the honest update | `sign_flip.py` | client update |
| `gaussian`: N(0, s^2) instead of the update (Blanchard et al. 2017) | `gaussian.py` | client update |
| `backdoor`: trigger + relabel, boosting, success metric (Bagdasaryan et al. 2020) | `backdoor.py` | client data, client update, evaluation |
| update attacks inside TFF's client work | `client_work.py` | learning process |

Nothing here is wired into training. How each piece plugs in:

* Selection, in the program, once: `malicious = selection.malicious_clients(
  training_client_ids, malicious_fraction, seed)`; it depends on nothing
  else, so a resumed run recomputes the same set.
* Data attacks, in the client data path before preprocessing (elements
  `OrderedDict(pixels=float32[28, 28], label=int32)`): for a malicious
  client, `label_flip.flip_labels(ds, num_classes)` or
  `backdoor.poison(ds, target, fraction)`, then the usual
  `preprocessing.preprocess`. Honest clients' datasets are untouched.
* Update attacks, on the client's model delta before it reaches the model
  aggregator: `sign_flip.sign_flip(delta, scale)`,
  `gaussian.gaussian_update(delta, scale, seed)` with
  `seed = gaussian.noise_seed(run_seed, round, client_id)`, or
  `backdoor.boost(delta, backdoor.replacement_factor(n, eta))`. They are
  TensorFlow functions of a structure, so they run inside the client's TF
  computation: `client_work.with_update_attack(inner_client_work,
  client_work.update_attack(kind, scale))` wraps TFF's client work, and
  each client's data becomes `OrderedDict(data=batches,
  attack=client_work.attack_input(malicious, seed))`; the learning process
  is composed from TFF's parts around it (`client_work.py`).
* Metrics: the wrapped client work's `attack/malicious_clients` (malicious
  clients sampled) and `selection.kept_malicious(kept_share,
  malicious_mask)` with the aggregator's `kept_share`
  (`tff_research.aggregators`) and the client work's
  `attack/malicious_mask`, which line up position by position even when the
  round is split across workers; on evaluation rounds the held-out accuracy
  on `backdoor.triggered_test_set(ds, target)` is `attack/backdoor_success`.
"""

NAMES = ('none', 'label_flip', 'sign_flip', 'gaussian', 'backdoor')
