"""Figures of the 'Where the value is held: interchange interventions and DAS' section."""

from __future__ import annotations

from opposites.figures.style import color, figure, task_row


@figure
def das_curve(data: dict, tasks: list[str]):
    """Per task, at the located END point: DAS's held-out IIA against the subspace's size k (95%
    interval), its IIA on the training pairs, the mean over random subspaces of the same k, the
    whole vector swapped (line and band) and DAS at the source word's position (largest k only)."""
    from opposites.findings import interchange_facts

    def draw(ax, task):
        facts = interchange_facts(data, task)
        at_end, source = facts["das"], facts["source"]
        ks = [k["k"] for k in at_end["k"]]
        full = at_end["full"]
        ax.axhspan(*full["iia_ci95"], color="0.88", lw=0)
        ax.axhline(full["iia"], color="0.35", lw=2.2, zorder=1, label="whole vector")
        low = [k["iia"] - k["iia_ci95"][0] for k in at_end["k"]]
        high = [k["iia_ci95"][1] - k["iia"] for k in at_end["k"]]
        ax.errorbar(ks, [k["iia"] for k in at_end["k"]], yerr=[low, high], color=color(task), marker="o", ms=3,
                    capsize=2, label="DAS, held out")
        ax.plot(ks, [k.get("train_iia", float("nan")) for k in at_end["k"]], color=color(task), ls="--", lw=1,
                label="DAS, training pairs")
        ax.plot(ks, [k["random_iia_mean"] for k in at_end["k"]], color="0.5", ls=":", marker="s", ms=2.5,
                label="random subspaces (mean)")
        if source and source["k"]:
            s = source["k"][-1]
            ax.plot([s["k"]], [s["iia"]], color="k", marker="x", ms=5, ls="none", label="DAS at the source word")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_ylim(-0.05, 1.08)
        verdict = ("testable" if facts["das_testable"] else
                   f"not testable: {at_end['k'][0]['n_clusters']} words" if facts["das_too_few_words"] else
                   f"not testable: bound {full['perfect_match95'][0]:.2f}".replace("-", "\u2212"))
        ax.set(xlabel="$k$ (dimensions)", title=f"{task}, {facts['sweep']['best_end']['label']}\n{verdict}")
        if task == tasks[0]:
            ax.set_ylabel("IIA")

    fig = task_row(tasks, draw, height=1.55)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5, frameon=False)
    return fig
