"""sid and as_of_sid become bigint, as seq already is: the protocol decoder accepts sids up to
2^63 - 1, and an int4 column made binary COPY store sid 2^32 + 11 as 11 (issue 12). Each
ALTER rewrites its table (and its unique index) once; on a large recording run it in a quiet
window."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("marketdata", "0004_snapshot_as_of"),
    ]

    operations = [
        migrations.AlterField(
            model_name="orderbookdelta",
            name="sid",
            field=models.BigIntegerField(),
        ),
        migrations.AlterField(
            model_name="orderbooksnapshot",
            name="as_of_sid",
            field=models.BigIntegerField(
                blank=True, help_text="orderbook sid whose frames this book reflects", null=True
            ),
        ),
        migrations.AlterField(
            model_name="orderbooksnapshot",
            name="sid",
            field=models.BigIntegerField(),
        ),
        migrations.AlterField(
            model_name="publictrade",
            name="sid",
            field=models.BigIntegerField(),
        ),
        migrations.AlterField(
            model_name="recordingevent",
            name="sid",
            field=models.BigIntegerField(blank=True, null=True),
        ),
    ]
