<%!
from async_sa.migrations import revision_bind_names
%>"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}

"""

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

# revision identifiers, used by Alembic.
revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade(engine_name: str) -> None:
    globals()[f"upgrade_{engine_name}"]()


def downgrade(engine_name: str) -> None:
    globals()[f"downgrade_{engine_name}"]()
% for name in revision_bind_names(config):


def upgrade_${name}() -> None:
    ${context.get("%s_upgrades" % name, "pass")}


def downgrade_${name}() -> None:
    ${context.get("%s_downgrades" % name, "pass")}
% endfor
