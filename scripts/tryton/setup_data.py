"""Master data for the Tryton used by the tests, made through proteus (Tryton's client).

A company (Tenon Demo GmbH, EUR), the customers of the example quotes as parties
whose code is their CRM account id, the example's products (goods and services)
whose code is the CPQ product code, one product that is not for sale, and a sale
price list for one customer (Contoso: 5% off the list price, 10% from 10 units).
Usage: setup_data.py <trytond.conf> <database>.
"""

import sys
from decimal import Decimal

from proteus import Model, config
from trytond.modules.company.tests.tools import create_company
from trytond.modules.currency.tests.tools import get_currency

conf, database = sys.argv[1], sys.argv[2]
config.set_trytond(database=database, config_file=conf)

Party = Model.get("party.party")
# Tryton's own set-up helpers (shipped with the modules): the company wizard, then
# the admin user's preferences reloaded so that the company is in the context.
company_party = Party(name="Tenon Demo GmbH")
company_party.save()
create_company(party=company_party, currency="EUR")
get_currency("USD")

CUSTOMERS = [
    ("0015g00000XyZ12AAB", "Northwind Traders GmbH"),
    ("0015g00000XyZ34AAB", "Contoso Retail SAS"),
]
parties = {}
for code, name in CUSTOMERS:
    party = Party(name=name, code=code)
    party.save()
    parties[code] = party

Uom = Model.get("product.uom")
unit, = Uom.find([("name", "=", "Unit")])
Template = Model.get("product.template")
PRODUCTS = [
    ("HW-LAP-14", "Laptop 14", "goods", "1299"),
    ("HW-DOCK-C", "USB-C Dock", "goods", "259"),
    ("BND-ANALYTICS", "Store Analytics Bundle", "service", "0"),
    ("HW-GW-02", "In-Store Sensor Gateway", "goods", "450"),
    ("SVC-ONB", "Onboarding Workshop", "service", "1200"),
    ("SW-ANL-LIC", "Analytics License", "service", "51"),
]
for code, name, kind, price in PRODUCTS:
    template = Template(
        name=name,
        code=code,
        type=kind,
        salable=True,
        default_uom=unit,
        list_price=Decimal(price),
    )
    template.save()
# A spare part that is bought, never sold.
Template(
    name="Spare Fan", code="HW-FAN-SP", type="goods", salable=False,
    default_uom=unit, list_price=Decimal("35"),
).save()

# Contoso's sale price list (the first matching line counts): 10% off the list price
# from 10 units, 5% off below. Northwind has none: it pays the list price.
PriceList = Model.get("product.price_list")
price_list = PriceList(name="Contoso Retail", price="list_price")
price_list.lines.new(sequence=10, quantity=10, formula="unit_price * Decimal('0.90')")
price_list.lines.new(sequence=20, formula="unit_price * Decimal('0.95')")
price_list.save()
contoso = parties["0015g00000XyZ34AAB"]
contoso.sale_price_list = price_list
contoso.save()

print("companies:", [c.rec_name for c in Model.get("company.company").find([])])
print("parties:", [(p.code, p.name) for p in Party.find([("code", "in", [c for c, _ in CUSTOMERS])])])
Product = Model.get("product.product")
print("products:", [p.code for p in Product.find([])])
print("price lists:", [(p.code, p.sale_price_list and p.sale_price_list.name) for p in parties.values()])
