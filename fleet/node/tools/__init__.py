"""Running an agent's declared tools on its node: argument checks and argv
(:mod:`~fleet.node.tools.run`), the supervisor (:mod:`~fleet.node.tools.supervise`), Python
handlers (:mod:`~fleet.node.tools.handler`) and the call records
(:mod:`~fleet.node.tools.records`). The declared tools' model is :mod:`fleet.core.tool_model`.
"""
