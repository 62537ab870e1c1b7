# JupyterHub's configuration: aie_hub.configure, from the deployment's settings (AIE_JUPYTERHUB_CONFIG).
import aie_hub

aie_hub.configure(c, aie_hub.load())  # type: ignore[name-defined]  # noqa: F821 - JupyterHub's config object
